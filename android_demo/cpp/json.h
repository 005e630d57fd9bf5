// A tiny JSON value: enough to read the flat nanoplus sidecar (<model>.json) and to write the
// detections and benchmark documents. Objects keep their insertion order, so written files read in
// the order they were built. Numbers are doubles (written with 17 significant digits only where
// needed, i.e. the shortest text that reads back to the same double).
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace nanoplus {
namespace json {

struct ParseError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Value {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    Value() = default;                                  // null
    Value(std::nullptr_t) {}
    Value(bool b) : type_(Type::Bool), bool_(b) {}
    Value(int v) : type_(Type::Number), number_(v) {}
    Value(int64_t v) : type_(Type::Number), number_(static_cast<double>(v)) {}
    Value(size_t v) : type_(Type::Number), number_(static_cast<double>(v)) {}
    Value(double v) : type_(Type::Number), number_(v) {}
    // a float is written as the shortest decimal that reads back to the same float (0.35f -> 0.35)
    Value(float v);
    Value(const char* s) : type_(Type::String), string_(s) {}
    Value(std::string s) : type_(Type::String), string_(std::move(s)) {}

    static Value array() { Value v; v.type_ = Type::Array; return v; }
    static Value object() { Value v; v.type_ = Type::Object; return v; }
    template <typename T>
    static Value array_of(const std::vector<T>& items) {
        Value v = array();
        for (const T& item : items) v.push_back(Value(item));
        return v;
    }

    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::Null; }
    bool is_bool() const { return type_ == Type::Bool; }
    bool is_number() const { return type_ == Type::Number; }
    bool is_string() const { return type_ == Type::String; }
    bool is_array() const { return type_ == Type::Array; }
    bool is_object() const { return type_ == Type::Object; }

    bool as_bool() const { return bool_; }
    double as_number() const { return number_; }
    const std::string& as_string() const { return string_; }
    const std::vector<Value>& items() const { return items_; }
    const std::vector<std::pair<std::string, Value>>& members() const { return members_; }

    // arrays
    void push_back(Value v) { items_.push_back(std::move(v)); }
    size_t size() const { return type_ == Type::Object ? members_.size() : items_.size(); }
    // objects: set replaces an existing key (keeps its position), find returns nullptr when absent
    Value& set(const std::string& key, Value v);
    const Value* find(const std::string& key) const;

    std::string dump(int indent = -1) const;  // indent < 0: one line

private:
    void dump_to(std::string& out, int indent, int depth) const;

    Type type_ = Type::Null;
    bool bool_ = false;
    double number_ = 0.0;
    std::string string_;
    std::vector<Value> items_;
    std::vector<std::pair<std::string, Value>> members_;
};

// Parses a whole document; throws ParseError("line L column C: what") on malformed input.
Value parse(const std::string& text);

std::string format_number(double v);  // shortest round-trip text; "null" for NaN / infinity
std::string quote(const std::string& s);

}  // namespace json
}  // namespace nanoplus

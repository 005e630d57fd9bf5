#include "metadata.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <cctype>
#include <set>
#include <sstream>
#include <sys/stat.h>

#include "json.h"

namespace nanoplus {

namespace {

constexpr int kFormatVersion = 1;  // runtime/metadata.py FORMAT_VERSION

const char* const kKnownFields[] = {
    "class_names", "input_hw", "strides", "reg_max", "mean", "std", "color_order", "resize_mode",
    "input_dtype", "score_activation", "layout", "input_name", "output_name", "model_name",
    "precision", "format_version",
    "level_outputs", "notes",  // for other programs (per-level ncnn blobs, usage notes): not needed here
};

[[noreturn]] void bad_field(const std::string& source, const std::string& name, const std::string& msg) {
    throw Error(source + ": field '" + name + "' " + msg);
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
    return out;
}

int as_int(const json::Value& v, const std::string& source, const std::string& name) {
    if (!v.is_number() || v.as_number() != std::floor(v.as_number()))
        bad_field(source, name, "must be an integer");
    return static_cast<int>(v.as_number());
}

std::string as_text(const json::Value& v, const std::string& source, const std::string& name, bool nullable) {
    if (nullable && v.is_null()) return "";
    if (!v.is_string()) bad_field(source, name, "must be a string");
    return v.as_string();
}

std::vector<double> as_numbers(const json::Value& v, const std::string& source, const std::string& name) {
    if (!v.is_array()) bad_field(source, name, "must be a list of numbers");
    std::vector<double> out;
    for (const json::Value& item : v.items()) {
        if (!item.is_number()) bad_field(source, name, "must be a list of numbers");
        out.push_back(item.as_number());
    }
    return out;
}

}  // namespace

int ModelMeta::num_points() const {
    int n = 0;
    for (int s : strides) n += ((input_h + s - 1) / s) * ((input_w + s - 1) / s);
    return n;
}

void ModelMeta::validate(const std::string& source) const {
    if (class_names.empty()) bad_field(source, "class_names", "is empty; a model needs at least one class name");
    if (input_h <= 0 || input_w <= 0)
        bad_field(source, "input_hw", "must be [height, width] with positive values, got [" +
                  std::to_string(input_h) + ", " + std::to_string(input_w) + "]");
    if (strides.empty() || std::any_of(strides.begin(), strides.end(), [](int s) { return s <= 0; }))
        bad_field(source, "strides", "must be positive integers");
    if (reg_max < 1) bad_field(source, "reg_max", "must be >= 1, got " + std::to_string(reg_max));
    for (double s : std) if (s == 0.0) bad_field(source, "std", "must not contain 0");
    const struct { const char* name; const std::string& value; std::vector<std::string> allowed; } choices[] = {
        {"color_order", color_order, {"BGR", "RGB"}},
        {"resize_mode", resize_mode, {"stretch", "letterbox"}},
        {"input_dtype", input_dtype, {"float32", "uint8"}},
        {"score_activation", score_activation, {"sigmoid", "none"}},
        {"layout", layout, {"NC", "CN"}},
    };
    for (const auto& c : choices)
        if (std::find(c.allowed.begin(), c.allowed.end(), c.value) == c.allowed.end())
            bad_field(source, c.name, "must be one of " + join(c.allowed) + ", got '" + c.value + "'");
}

std::string sidecar_path(const std::string& model_path) {
    // Path.with_suffix(".json"): replace the extension of the last component (or append one)
    size_t slash = model_path.find_last_of('/');
    size_t dot = model_path.find_last_of('.');
    if (dot == std::string::npos || (slash != std::string::npos && dot < slash) || dot == slash + 1)
        return model_path + ".json";
    return model_path.substr(0, dot) + ".json";
}

bool file_exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(path + ": cannot open this file (" + (file_exists(path) ? "permission denied" : "no such file") + ")");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

ModelMeta meta_from_json(const std::string& text, const std::string& source) {
    json::Value doc;
    try {
        doc = json::parse(text);
    } catch (const json::ParseError& e) {
        throw Error(source + ": metadata is not valid JSON (" + e.what() + ")");
    }
    if (!doc.is_object()) throw Error(source + ": metadata must be a JSON object");
    std::vector<std::string> unknown;
    for (const auto& member : doc.members())
        if (std::find(std::begin(kKnownFields), std::end(kKnownFields), member.first) == std::end(kKnownFields))
            unknown.push_back(member.first);
    if (!unknown.empty()) throw Error(source + ": unknown metadata field(s) " + join(unknown) + "; this program reads format_version " + std::to_string(kFormatVersion));
    if (!doc.find("class_names") || !doc.find("input_hw"))
        throw Error(source + ": metadata needs at least 'class_names' and 'input_hw'");

    ModelMeta meta;
    if (const json::Value* v = doc.find("format_version")) {
        int version = as_int(*v, source, "format_version");
        if (version > kFormatVersion)
            throw Error(source + ": metadata format_version " + std::to_string(version) + " is newer than this program understands (" +
                        std::to_string(kFormatVersion) + "); rebuild nanoplus_ncnn from a newer nanoplus");
    }
    const json::Value& names = *doc.find("class_names");
    if (!names.is_array()) bad_field(source, "class_names", "must be a list of strings");
    for (const json::Value& n : names.items()) meta.class_names.push_back(as_text(n, source, "class_names", false));
    std::vector<double> hw = as_numbers(*doc.find("input_hw"), source, "input_hw");
    if (hw.size() != 2) bad_field(source, "input_hw", "must be [height, width]");
    meta.input_h = static_cast<int>(hw[0]);
    meta.input_w = static_cast<int>(hw[1]);
    if (const json::Value* v = doc.find("strides")) {
        meta.strides.clear();
        for (double s : as_numbers(*v, source, "strides")) meta.strides.push_back(static_cast<int>(s));
    }
    if (const json::Value* v = doc.find("reg_max")) meta.reg_max = as_int(*v, source, "reg_max");
    for (const char* name : {"mean", "std"}) {
        if (const json::Value* v = doc.find(name)) {
            std::vector<double> values = as_numbers(*v, source, name);
            if (values.size() != 3) bad_field(source, name, "needs three values (one per channel)");
            std::array<double, 3>& target = std::string(name) == "mean" ? meta.mean : meta.std;
            std::copy(values.begin(), values.end(), target.begin());
        }
    }
    const struct { const char* name; std::string* target; bool nullable; } texts[] = {
        {"color_order", &meta.color_order, false}, {"resize_mode", &meta.resize_mode, false},
        {"input_dtype", &meta.input_dtype, false}, {"score_activation", &meta.score_activation, false},
        {"layout", &meta.layout, false}, {"input_name", &meta.input_name, true},
        {"output_name", &meta.output_name, true}, {"model_name", &meta.model_name, false},
        {"precision", &meta.precision, false},
    };
    for (const auto& t : texts)
        if (const json::Value* v = doc.find(t.name)) *t.target = as_text(*v, source, t.name, t.nullable);
    meta.validate(source);
    return meta;
}

bool read_sidecar(const std::string& model_path, ModelMeta& meta) {
    std::string path = sidecar_path(model_path);
    if (!file_exists(path)) return false;
    meta = meta_from_json(read_text_file(path), path);
    return true;
}

const std::vector<std::string>& coco_class_names() {
    static const std::vector<std::string> names = {
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
        "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
        "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
        "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
        "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
        "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
        "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
        "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
        "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
        "teddy bear", "hair drier", "toothbrush",
    };
    return names;
}

std::vector<std::string> read_class_names(const std::string& path) {
    if (!file_exists(path)) throw Error(path + ": class names file not found (one class name per line)");
    std::istringstream lines(read_text_file(path));
    std::vector<std::string> names;
    for (std::string line; std::getline(lines, line);) {
        size_t a = line.find_first_not_of(" \t\r");
        size_t b = line.find_last_not_of(" \t\r");
        if (a != std::string::npos) names.push_back(line.substr(a, b - a + 1));
    }
    if (names.empty()) throw Error(path + ": class names file is empty (one class name per line)");
    return names;
}

int input_size_from_name(const std::string& path) {
    std::string stem = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
    if (stem.find('.') != std::string::npos) stem = stem.substr(0, stem.find_last_of('.'));
    // numbers of 2-4 digits not touching another digit or a dot (runtime/detector.py input_size_from_name)
    std::set<int> sizes;
    for (size_t i = 0; i < stem.size();) {
        if (!std::isdigit(static_cast<unsigned char>(stem[i]))) { ++i; continue; }
        size_t j = i;
        while (j < stem.size() && std::isdigit(static_cast<unsigned char>(stem[j]))) ++j;
        bool isolated = (i == 0 || stem[i - 1] != '.') && (j == stem.size() || stem[j] != '.');
        if (isolated && j - i >= 2 && j - i <= 4) {
            int n = std::stoi(stem.substr(i, j - i));
            if (n >= 64 && n <= 4096 && n % 32 == 0) sizes.insert(n);
        }
        i = j;
    }
    return sizes.size() == 1 ? *sizes.begin() : 0;
}

}  // namespace nanoplus

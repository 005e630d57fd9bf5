// What a deployed NanoDet-Plus model is: the C++ mirror of runtime/metadata.py (ModelMeta).
//
// Exporters write a sidecar <model>.json next to model.param; this reads it (same fields, same
// validation, same defaults) so that nothing here hard-codes a class count, an input size or a
// layout. Foreign models without a sidecar (the published ncnn files) are described by flags and
// one probe run, see Detector.
#pragma once

#include <array>
#include <stdexcept>
#include <string>
#include <vector>

namespace nanoplus {

// Every error meant for the user: the message names the file, the field and the fix.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ModelMeta {
    std::vector<std::string> class_names;
    int input_h = 0, input_w = 0;                  // network input (height, width)
    std::vector<int> strides = {8, 16, 32, 64};
    int reg_max = 7;
    std::array<double, 3> mean = {103.53, 116.28, 123.675};  // in color_order
    std::array<double, 3> std = {57.375, 57.12, 58.395};
    std::string color_order = "BGR";               // BGR | RGB: channel order the network expects
    std::string resize_mode = "stretch";           // stretch | letterbox (keep ratio, pad bottom/right)
    std::string input_dtype = "float32";           // float32: normalised; uint8: mean/std in the graph
    std::string score_activation = "sigmoid";      // sigmoid: scores in [0, 1]; none: raw logits
    std::string layout = "NC";                     // NC: (N, C+4(reg_max+1)); CN: channels first
    std::string input_name, output_name;           // ncnn blob names ("" = detect from the .param)
    std::string model_name;
    std::string precision = "fp32";                // what the file stores: fp32, fp16, int8

    int num_classes() const { return static_cast<int>(class_names.size()); }
    int num_bins() const { return 4 * (reg_max + 1); }
    int num_channels() const { return num_classes() + num_bins(); }
    int num_points() const;  // sum over strides of ceil(H/s) * ceil(W/s)

    // Throws Error("<source>: field 'x' ...") for a value the runtime cannot use.
    void validate(const std::string& source) const;
};

// "model.param" -> "model.json" (the sidecar path; same rule as runtime/metadata.py).
std::string sidecar_path(const std::string& model_path);
bool file_exists(const std::string& path);
std::string read_text_file(const std::string& path);  // throws Error naming the file

// Parses a sidecar document (the JSON text of ModelMeta.to_json()); unknown fields and a newer
// format_version are errors, as in Python. `source` names the file in messages.
ModelMeta meta_from_json(const std::string& text, const std::string& source);
// The model's sidecar, or false when there is none.
bool read_sidecar(const std::string& model_path, ModelMeta& meta);

// The 80 COCO class names in training order (what a foreign 80-class model is given).
const std::vector<std::string>& coco_class_names();
// Class names from a text file, one per line (blank lines skipped).
std::vector<std::string> read_class_names(const std::string& path);
// A square input size written in a file name (nanodet-plus-m_416.param -> 416): exactly one number
// there that is a multiple of 32 from 64 to 4096; 0 when there is none or several.
int input_size_from_name(const std::string& path);

}  // namespace nanoplus

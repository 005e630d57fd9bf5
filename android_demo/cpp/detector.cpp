#include "detector.h"

#include <algorithm>
#include <cstring>

#include <platform.h>  // ncnn: NCNN_VERSION_STRING

namespace nanoplus {

namespace {

std::string with_suffix(const std::string& path, const std::string& suffix) {
    std::string json = sidecar_path(path);  // same extension rule
    return json.substr(0, json.size() - 5) + suffix;
}

std::string base_name(const std::string& path) {
    size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool has_name(const std::vector<const char*>& names, const std::string& name) {
    return std::any_of(names.begin(), names.end(), [&](const char* n) { return name == n; });
}

std::string list_names(const std::vector<const char*>& names) {
    std::string out;
    for (const char* n : names) out += (out.empty() ? "" : ", ") + std::string(n);
    return out.empty() ? "none" : out;
}

}  // namespace

std::string ncnn_version() { return NCNN_VERSION_STRING; }

Detector::Detector(const std::string& param_path, const DetectorOptions& options)
    : param_path_(param_path), options_(options) {
    if (!file_exists(param_path)) throw Error(param_path + ": no such model file (give the ncnn .param; its .bin must be beside it)");
    const std::string weights = with_suffix(param_path, ".bin");
    if (!file_exists(weights)) throw Error(param_path + ": the ncnn weights " + base_name(weights) + " are missing beside the .param");
    if (options_.precision != "auto" && options_.precision != "fp32")
        throw Error("--precision must be 'auto' (ncnn's defaults: fp16 storage where the CPU has it, int8 layers run quantised) or 'fp32', got '" +
                    options_.precision + "'");

    if (options_.threads > 0) net_.opt.num_threads = options_.threads;
    if (options_.precision == "fp32") {
        net_.opt.use_fp16_storage = false;
        net_.opt.use_fp16_packed = false;
        net_.opt.use_fp16_arithmetic = false;
        net_.opt.use_bf16_storage = false;
        net_.opt.use_bf16_packed = false;
    }
    // A failed load leaves a half-built net that crashes later: check both return codes.
    if (net_.load_param(param_path.c_str()) != 0)
        throw Error(param_path + ": ncnn cannot parse this .param file (not an ncnn text .param, corrupt, or from a newer ncnn)");
    if (net_.load_model(weights.c_str()) != 0)
        throw Error(weights + ": ncnn cannot load these weights (truncated, or not the .bin of " + base_name(param_path) + ")");

    std::vector<std::string> class_names;
    if (!options_.class_names_file.empty()) class_names = read_class_names(options_.class_names_file);

    if (read_sidecar(param_path, meta_)) {
        meta_source_ = "sidecar " + sidecar_path(param_path);
        if (!class_names.empty()) meta_.class_names = class_names;
        if (options_.input_h > 0) { meta_.input_h = options_.input_h; meta_.input_w = options_.input_w; }
        if (!options_.layout.empty()) meta_.layout = options_.layout;
        if (!options_.score_activation.empty()) meta_.score_activation = options_.score_activation;
        if (!options_.strides.empty()) meta_.strides = options_.strides;
        if (options_.reg_max >= 0) meta_.reg_max = options_.reg_max;
    }
    // blob names: flags, then the sidecar, then the .param itself
    const std::vector<const char*>& inputs = net_.input_names();
    const std::vector<const char*>& outputs = net_.output_names();
    if (!options_.input_name.empty()) meta_.input_name = options_.input_name;
    if (!options_.output_name.empty()) meta_.output_name = options_.output_name;
    if (meta_.input_name.empty() && !inputs.empty()) meta_.input_name = inputs.front();
    if (meta_.output_name.empty() && !outputs.empty()) meta_.output_name = outputs.back();
    if (!has_name(inputs, meta_.input_name))
        throw Error(param_path + ": no input blob '" + meta_.input_name + "' (inputs: " + list_names(inputs) + "); fix --input-name");
    if (meta_.output_name.empty())
        throw Error(param_path + ": no output blob found in the .param; give --output-name");

    if (meta_source_.empty()) describe_foreign_model(class_names);
    meta_.validate(param_path + " metadata with the given flags");
    if (meta_.model_name.empty()) {
        std::string stem = base_name(param_path);
        meta_.model_name = stem.substr(0, stem.find_last_of('.'));
    }
}

void Detector::describe_foreign_model(const std::vector<std::string>& class_names) {
    // The published files: meta_ still holds the defaults (strides 8..64, reg_max 7, upstream mean/std).
    if (!options_.strides.empty()) meta_.strides = options_.strides;
    if (options_.reg_max >= 0) meta_.reg_max = options_.reg_max;
    std::string notes;
    if (options_.input_h > 0) {
        meta_.input_h = options_.input_h;
        meta_.input_w = options_.input_w;
    } else {
        int size = input_size_from_name(param_path_);
        if (size == 0)
            throw Error(param_path_ + ": no nanoplus metadata (no " + base_name(sidecar_path(param_path_)) +
                        " beside it) and the input size cannot be detected; pass it: --input-size 416 (or HEIGHTxWIDTH)");
        meta_.input_h = meta_.input_w = size;
        notes = "input size " + std::to_string(size) + "x" + std::to_string(size) + " taken from the file name (pass --input-size to change it)";
    }

    // One probe run on a blank (mean-coloured) input: the output's shape and value range tell the
    // layout, the class count and logits vs sigmoid.
    ncnn::Mat probe(meta_.input_w, meta_.input_h, 3);
    probe.fill(0.f);
    ncnn::Mat out = infer(probe);
    const int num_points = meta_.num_points();
    const int num_bins = 4 * (meta_.reg_max + 1);
    std::string layout = options_.layout;
    if (layout.empty() && out.dims == 2) {
        if (out.h == num_points && out.w != num_points) layout = "NC";
        else if (out.w == num_points) layout = "CN";
    }
    const int width = layout == "NC" ? out.w : out.h;
    const bool fits = out.dims == 2 && !layout.empty() && (layout == "NC" ? out.h : out.w) == num_points && width - num_bins >= 1;
    if (!fits)
        throw Error(param_path_ + ": output '" + meta_.output_name + "' of shape (" + std::to_string(out.h) + ", " + std::to_string(out.w) +
                    ") (dims " + std::to_string(out.dims) + ") does not look like NanoDet-Plus with input " + std::to_string(meta_.input_h) +
                    "x" + std::to_string(meta_.input_w) + ": expected (" + std::to_string(num_points) + ", classes + " + std::to_string(num_bins) +
                    ") or (classes + " + std::to_string(num_bins) + ", " + std::to_string(num_points) + "). Check --input-size and --output-name");
    meta_.layout = layout;
    const int num_classes = width - num_bins;
    if (!options_.score_activation.empty()) {
        meta_.score_activation = options_.score_activation;
    } else {
        bool inside = true;  // class values outside [0, 1] can only be logits
        const float* data = out;
        for (int p = 0; p < num_points && inside; ++p)
            for (int c = 0; c < num_classes && inside; ++c) {
                float v = layout == "NC" ? data[static_cast<size_t>(p) * out.w + c] : data[static_cast<size_t>(c) * out.w + p];
                inside = v >= 0.f && v <= 1.f;
            }
        meta_.score_activation = inside ? "sigmoid" : "none";
    }
    if (!class_names.empty()) {
        if (static_cast<int>(class_names.size()) != num_classes)
            throw Error(options_.class_names_file + ": " + std::to_string(class_names.size()) + " class names for a model with " +
                        std::to_string(num_classes) + " classes; give one name per class");
        meta_.class_names = class_names;
    } else if (num_classes == static_cast<int>(coco_class_names().size())) {
        meta_.class_names = coco_class_names();
    } else {
        for (int c = 0; c < num_classes; ++c) meta_.class_names.push_back("class" + std::to_string(c));
    }
    meta_source_ = "foreign model: layout " + meta_.layout + ", " + std::to_string(num_classes) + " classes, " +
                   (meta_.score_activation == "none" ? "logits" : "sigmoid scores") + (notes.empty() ? "" : "; " + notes);
}

ncnn::Mat Detector::preprocess(const ImageView& image, WarpMatrix& matrix) const {
    if (!image.data || image.width <= 0 || image.height <= 0) throw Error("preprocess: empty image");
    const int h = meta_.input_h, w = meta_.input_w;
    matrix = get_warp_matrix(image.height, image.width, h, w, meta_.resize_mode == "letterbox");
    ncnn::Mat input(w, h, 3);
    float* const planes[3] = {input.channel(0), input.channel(1), input.channel(2)};
    preprocess_to_planes(image, matrix, h, w, meta_.mean, meta_.std, meta_.color_order == "RGB",
                         meta_.input_dtype == "float32", planes);
    return input;
}

ncnn::Mat Detector::infer(const ncnn::Mat& input) const {
    ncnn::Extractor extractor = net_.create_extractor();
    if (extractor.input(meta_.input_name.c_str(), input) != 0)
        throw Error("ncnn: cannot feed blob '" + meta_.input_name + "'; fix --input-name");
    ncnn::Mat output;
    if (extractor.extract(meta_.output_name.c_str(), output) != 0 || output.empty())
        throw Error(param_path_ + ": ncnn cannot extract blob '" + meta_.output_name + "' (outputs: " + list_names(net_.output_names()) +
                    "); fix --output-name");
    // fp16/bf16 storage or packed layouts come back as fp32 with elempack 1 from extract() by
    // default; a 3-D (1, h, w) output is the same data as 2-D
    if (output.dims == 3 && output.c == 1) output = output.reshape(output.w, output.h);
    return output;
}

RawOutput Detector::raw_view(const ncnn::Mat& output) const {
    const int num_points = meta_.num_points(), num_channels = meta_.num_channels();
    const bool cn = meta_.layout == "CN";
    const int rows = cn ? num_channels : num_points, cols = cn ? num_points : num_channels;
    if (output.dims != 2 || output.h != rows || output.w != cols || output.elemsize != 4)
        throw Error(param_path_ + ": output shape (" + std::to_string(output.h) + ", " + std::to_string(output.w) + "), but the metadata (" +
                    std::to_string(meta_.num_classes()) + " classes, input " + std::to_string(meta_.input_h) + "x" + std::to_string(meta_.input_w) +
                    ", layout " + meta_.layout + ") expects (" + std::to_string(rows) + ", " + std::to_string(cols) +
                    "); fix the metadata or the --input-size / --layout flags");
    RawOutput raw;
    raw.data = static_cast<const float*>(output);
    raw.type = ScalarType::F32;
    raw.num_points = num_points;
    raw.num_channels = num_channels;
    raw.channels_first = cn;
    raw.scores_are_sigmoid = meta_.score_activation == "sigmoid";
    return raw;
}

std::vector<Detection> Detector::postprocess(const ncnn::Mat& output, const WarpMatrix& matrix, int src_h, int src_w) const {
    std::vector<Detection> dets = nanoplus::postprocess(raw_view(output), meta_.input_h, meta_.input_w, meta_.strides, meta_.reg_max,
                                                        options_.postprocess);
    boxes_to_original(dets, matrix, src_h, src_w);
    return dets;
}

std::vector<Detection> Detector::detect(const ImageView& image) const {
    WarpMatrix matrix;
    ncnn::Mat input = preprocess(image, matrix);
    return postprocess(infer(input), matrix, image.height, image.width);
}

}  // namespace nanoplus

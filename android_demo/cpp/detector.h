// A NanoDet-Plus ncnn model (.param + .bin) with its pre- and post-processing: the C++ counterpart
// of runtime/detector.py Detector for the ncnn backend.
//
//   nanoplus::Detector det("model.param", options);
//   std::vector<nanoplus::Detection> dets = det.detect(image);   // boxes in original pixels
//
// Where the model's description comes from, first found wins (as in Python):
// 1. the sidecar <model>.json next to the .param (written by `nanoplus export`);
// 2. a foreign NanoDet-Plus model (the published ncnn files): blob names from the .param (the
//    Input layer's blob, the blob no layer consumes), the input size from the options or a number
//    in the file name, and one probe run on a blank input for the layout ((N, C+32) or (C+32, N)),
//    the class count and logits vs sigmoid; 80 classes get the COCO names.
// Options given explicitly override both.
#pragma once

#include <string>
#include <vector>

#include "metadata.h"
#include "postprocess.h"
#include "preprocess.h"

#include <net.h>  // ncnn

namespace nanoplus {

struct DetectorOptions {
    int threads = 0;                  // ncnn opt.num_threads; 0 = ncnn's default (big cores)
    std::string precision = "auto";   // auto: ncnn's defaults (fp16 storage where the CPU has it); fp32
    PostprocessOptions postprocess;
    // Foreign-model flags: override the sidecar or what is detected. Empty / 0 / -1 = not given.
    int input_h = 0, input_w = 0;
    std::string class_names_file;     // one name per line
    std::string layout;               // NC | CN
    std::string score_activation;     // sigmoid | none (logits)
    std::string input_name, output_name;
    std::vector<int> strides;
    int reg_max = -1;
};

class Detector {
public:
    Detector(const std::string& param_path, const DetectorOptions& options);
    Detector(const Detector&) = delete;
    Detector& operator=(const Detector&) = delete;

    const ModelMeta& meta() const { return meta_; }
    const std::string& model_path() const { return param_path_; }
    const std::string& precision() const { return options_.precision; }
    // How the description was found ("sidecar model.json" or "foreign model: ..."), for the user.
    const std::string& meta_source() const { return meta_source_; }
    const PostprocessOptions& postprocess_options() const { return options_.postprocess; }
    void set_postprocess_options(const PostprocessOptions& options) { options_.postprocess = options; }

    // image -> network input (w = W, h = H, c = 3 float planes) and the warp matrix.
    ncnn::Mat preprocess(const ImageView& image, WarpMatrix& matrix) const;
    // network input -> the engine's raw output blob (2-D; see raw_view for its layout).
    ncnn::Mat infer(const ncnn::Mat& input) const;
    // raw output -> detections in original pixels, best first.
    std::vector<Detection> postprocess(const ncnn::Mat& output, const WarpMatrix& matrix, int src_h, int src_w) const;
    std::vector<Detection> detect(const ImageView& image) const;

    RawOutput raw_view(const ncnn::Mat& output) const;  // throws Error when the shape does not fit

private:
    void describe_foreign_model(const std::vector<std::string>& class_names);

    std::string param_path_;
    DetectorOptions options_;
    ModelMeta meta_;
    std::string meta_source_;
    ncnn::Net net_;
};

// ncnn's version string (e.g. 1.0.20261020).
std::string ncnn_version();

}  // namespace nanoplus

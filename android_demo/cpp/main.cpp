// nanoplus_ncnn: NanoDet-Plus through ncnn in C++, with the nanoplus runtime's pre- and
// post-processing (a Raspberry Pi, an Android phone over `adb shell`, any Linux box).
//
//   nanoplus_ncnn detect MODEL.param IMAGE [IMAGE ...] [--score-thr 0.35] [--out annotated.jpg] [--json dets.json]
//   nanoplus_ncnn bench MODEL.param [MODEL.param ...] [--threads 1,2,4] [--runs 100] [--warmup 10] [--json results.json]
//   nanoplus_ncnn info MODEL.param
//
// Run without arguments (or with --help) for every option.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench.h"
#include "detector.h"
#include "image_io.h"
#include "json.h"

#ifndef NANOPLUS_NCNN_VERSION
#define NANOPLUS_NCNN_VERSION "0.1.0"
#endif

using namespace nanoplus;

namespace {

const char* const kUsage = R"(nanoplus_ncnn )" NANOPLUS_NCNN_VERSION R"( - NanoDet-Plus on ncnn with the nanoplus runtime's pre/post-processing

usage:
  nanoplus_ncnn detect MODEL.param IMAGE [IMAGE ...] [options]
      Detect objects; prints one summary line per image.
      --out FILE          annotated image (.jpg/.png/.bmp; one IMAGE only)
      --out-dir DIR       annotated images, one per IMAGE, under their own names
      --json FILE         detections as JSON (boxes in original image pixels)
      --score-thr X       score threshold (default 0.35; upstream evaluation uses 0.05)
      --iou-thr X         NMS IoU threshold (default 0.6)
      --max-det N         keep at most N boxes (default 100; 0 = all)
      --single-label      one class per point (argmax) instead of every class above the threshold
      --threads N         ncnn threads (default: ncnn's choice, the big cores)
      --precision P       auto (ncnn's defaults: fp16 storage/arithmetic where the CPU has it) | fp32
      --dump-input FILE   the network input of the (one) image as raw float32 (3, H, W), for checks

  nanoplus_ncnn bench MODEL.param [MODEL.param ...] [options]
      Latency of the engine alone and of image -> boxes (pre-processing, inference, decode + NMS),
      models and thread counts interleaved round by round; results in the nanoplus bench JSON schema
      (runtime/bench_schema.json), for `nanoplus bench --merge`.
      --threads LIST      e.g. 1,2,4 (default 1)
      --runs N            measured rounds (default 100)     --seconds S   measure for S seconds instead
      --warmup N          warm-up iterations per case (default 10, at least 1)
      --image FILE        end-to-end input image (default: a synthetic 640x480 image)
      --precision P       f32 (default, as `nanoplus bench`: ncnn fp16 off) | native (ncnn's defaults)
      --label NAME        machine name for tables (default: board / phone model, else the CPU)
      --json FILE         write the results document      --no-samples  leave raw samples out of it
      --score-thr, --iou-thr, --max-det as for detect

  nanoplus_ncnn info MODEL.param      what the program reads from the model and its metadata

foreign models (no <model>.json sidecar beside the .param, e.g. the published ncnn files):
      --input-size N|HxW  network input size (default: a size written in the file name)
      --names FILE        class names, one per line (80 classes default to COCO's)
      --layout NC|CN      output (points, channels) or (channels, points)   (default: detected)
      --scores sigmoid|logits   (default: detected from one probe run)
      --input-name B, --output-name B   ncnn blob names (default: from the .param)
      --strides 8,16,32,64   --reg-max 7
)";

struct UsageError : Error {
    using Error::Error;
};

struct Args {
    std::string command;
    std::vector<std::string> positional;
    DetectorOptions detector;
    std::string out, out_dir, json_path, image, label, dump_input;
    std::vector<int> threads_list;
    int runs = 0, warmup = 10;
    double seconds = 0;
    std::string bench_precision = "f32";
    bool keep_samples = true;
    bool precision_given = false;
    std::string command_line;
};

std::vector<int> parse_int_list(const std::string& text, const std::string& flag) {
    std::vector<int> out;
    size_t start = 0;
    while (start <= text.size()) {
        size_t comma = text.find(',', start);
        std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        char* end = nullptr;
        long v = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v <= 0) throw UsageError(flag + " '" + text + "': give positive integers separated by commas, e.g. 1,2,4");
        out.push_back(static_cast<int>(v));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

double parse_number(const std::string& text, const std::string& flag) {
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') throw UsageError(flag + " '" + text + "' is not a number");
    return v;
}

int parse_int(const std::string& text, const std::string& flag) {
    double v = parse_number(text, flag);
    if (v != static_cast<int>(v)) throw UsageError(flag + " '" + text + "' must be an integer");
    return static_cast<int>(v);
}

void parse_input_size(const std::string& text, int& h, int& w) {
    size_t x = text.find_first_of("x,");
    try {
        if (x == std::string::npos) {
            h = w = parse_int(text, "--input-size");
        } else {
            h = parse_int(text.substr(0, x), "--input-size");
            w = parse_int(text.substr(x + 1), "--input-size");
        }
    } catch (const UsageError&) {
        h = w = 0;
    }
    if (h <= 0 || w <= 0) throw UsageError("--input-size '" + text + "' is not a size; write 416 or HEIGHTxWIDTH such as 320x416");
}

Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 0; i < argc; ++i) a.command_line += (i ? " " : "") + std::string(argv[i]);
    if (argc < 2) throw UsageError("");
    a.command = argv[1];
    for (int i = 2; i < argc; ++i) {
        std::string flag = argv[i];
        if (flag.rfind("--", 0) != 0) { a.positional.push_back(flag); continue; }
        std::string value;
        const bool takes_value = flag != "--single-label" && flag != "--no-samples" && flag != "--help";
        if (takes_value) {
            size_t eq = flag.find('=');
            if (eq != std::string::npos) {
                value = flag.substr(eq + 1);
                flag = flag.substr(0, eq);
            } else {
                if (i + 1 >= argc) throw UsageError(flag + " needs a value");
                value = argv[++i];
            }
        }
        PostprocessOptions& post = a.detector.postprocess;
        if (flag == "--help") throw UsageError("");
        else if (flag == "--single-label") post.multi_label = false;
        else if (flag == "--no-samples") a.keep_samples = false;
        else if (flag == "--score-thr") post.score_thr = static_cast<float>(parse_number(value, flag));
        else if (flag == "--iou-thr") post.iou_thr = static_cast<float>(parse_number(value, flag));
        else if (flag == "--max-det") post.max_det = parse_int(value, flag);
        else if (flag == "--threads") a.threads_list = parse_int_list(value, flag);
        else if (flag == "--precision") { a.detector.precision = a.bench_precision = value; a.precision_given = true; }
        else if (flag == "--out") a.out = value;
        else if (flag == "--out-dir") a.out_dir = value;
        else if (flag == "--dump-input") a.dump_input = value;
        else if (flag == "--json") a.json_path = value;
        else if (flag == "--image") a.image = value;
        else if (flag == "--label") a.label = value;
        else if (flag == "--runs") a.runs = parse_int(value, flag);
        else if (flag == "--seconds") a.seconds = parse_number(value, flag);
        else if (flag == "--warmup") a.warmup = parse_int(value, flag);
        else if (flag == "--input-size") parse_input_size(value, a.detector.input_h, a.detector.input_w);
        else if (flag == "--names") a.detector.class_names_file = value;
        else if (flag == "--layout") a.detector.layout = value;
        else if (flag == "--scores") a.detector.score_activation = value == "logits" ? "none" : value;
        else if (flag == "--input-name") a.detector.input_name = value;
        else if (flag == "--output-name") a.detector.output_name = value;
        else if (flag == "--strides") a.detector.strides = parse_int_list(value, flag);
        else if (flag == "--reg-max") a.detector.reg_max = parse_int(value, flag);
        else throw UsageError("unknown option " + flag + " (see nanoplus_ncnn --help)");
    }
    if (!a.detector.layout.empty() && a.detector.layout != "NC" && a.detector.layout != "CN")
        throw UsageError("--layout '" + a.detector.layout + "': use NC for (points, channels) or CN for (channels, points)");
    if (!a.detector.score_activation.empty() && a.detector.score_activation != "sigmoid" && a.detector.score_activation != "none")
        throw UsageError("--scores '" + a.detector.score_activation + "': use sigmoid or logits");
    return a;
}

std::string base_name(const std::string& path) {
    size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string summary(const std::vector<Detection>& dets, const std::vector<std::string>& names, size_t limit = 6) {
    if (dets.empty()) return "no detections";
    std::string out = std::to_string(dets.size()) + (dets.size() == 1 ? " detection: " : " detections: ");
    for (size_t i = 0; i < dets.size() && i < limit; ++i) {
        char buf[160];
        std::snprintf(buf, sizeof(buf), "%s%s %.2f", i ? ", " : "", names[static_cast<size_t>(dets[i].class_id)].c_str(), dets[i].score);
        out += buf;
    }
    if (dets.size() > limit) out += ", ... (+" + std::to_string(dets.size() - limit) + ")";
    return out;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// -- detect ---------------------------------------------------------------------------------------
int run_detect(Args& a) {
    if (a.positional.size() < 2) throw UsageError("detect needs MODEL.param and at least one IMAGE");
    if (!a.out.empty() && a.positional.size() != 2) throw UsageError("--out names one annotated image; with several images use --out-dir DIR");
    if (!a.dump_input.empty() && a.positional.size() != 2) throw UsageError("--dump-input takes one IMAGE");
    if (a.threads_list.size() > 1) throw UsageError("detect takes one --threads value");
    if (!a.threads_list.empty()) a.detector.threads = a.threads_list[0];
    const std::string model = a.positional[0];
    Detector det(model, a.detector);
    const ModelMeta& meta = det.meta();
    std::fprintf(stderr, "%s: %d classes, input %dx%d (%s), ncnn %s %s; %s\n", meta.model_name.c_str(), meta.num_classes(), meta.input_h,
                 meta.input_w, meta.resize_mode.c_str(), ncnn_version().c_str(), det.precision().c_str(), det.meta_source().c_str());

    json::Value images = json::Value::array();
    json::Value skipped = json::Value::array();
    const size_t count = a.positional.size() - 1;
    for (size_t k = 1; k < a.positional.size(); ++k) {
        const std::string& path = a.positional[k];
        Image image;
        try {
            image = read_image(path);
        } catch (const Error& e) {
            if (count == 1) throw;
            std::fprintf(stderr, "[%zu/%zu] skipped: %s\n", k, count, e.what());  // not fatal for a list
            skipped.push_back(path);
            continue;
        }
        auto t0 = std::chrono::steady_clock::now();
        WarpMatrix matrix;
        ncnn::Mat input = det.preprocess(image.view(), matrix);
        std::vector<Detection> dets = det.postprocess(det.infer(input), matrix, image.height, image.width);
        double ms = ms_since(t0);
        if (!a.dump_input.empty()) {
            std::string bytes;
            for (int c = 0; c < input.c; ++c)
                bytes.append(reinterpret_cast<const char*>(static_cast<const float*>(input.channel(c))), sizeof(float) * input.w * input.h);
            write_text_atomic(a.dump_input, bytes);
        }
        std::printf("[%zu/%zu] %s %dx%d: %s (%.1f ms)\n", k, count, base_name(path).c_str(), image.width, image.height,
                    summary(dets, meta.class_names).c_str(), ms);

        json::Value list = json::Value::array();
        for (const Detection& d : dets) {
            json::Value item = json::Value::object();
            json::Value box = json::Value::array();
            for (float v : {d.x1, d.y1, d.x2, d.y2}) box.push_back(v);
            item.set("box", box);
            item.set("score", d.score);
            item.set("class_id", d.class_id);
            item.set("class_name", meta.class_names[static_cast<size_t>(d.class_id)]);
            list.push_back(item);
        }
        json::Value entry = json::Value::object();
        entry.set("file", path);
        entry.set("image_id", static_cast<int>(k));
        entry.set("height", image.height);
        entry.set("width", image.width);
        entry.set("inference_ms", ms);
        entry.set("detections", list);
        images.push_back(entry);

        if (!a.out.empty() || !a.out_dir.empty()) {
            draw_detections(image, dets, meta.class_names);
            const std::string target = !a.out.empty() ? a.out : a.out_dir + "/" + base_name(path);
            write_image(image, target);
        }
    }
    if (!a.json_path.empty()) {
        json::Value doc = json::Value::object();
        doc.set("model", model);
        doc.set("backend", "ncnn");
        doc.set("engine_version", ncnn_version());
        doc.set("precision", det.precision());
        doc.set("generator", std::string("nanoplus_ncnn ") + NANOPLUS_NCNN_VERSION);
        doc.set("class_names", json::Value::array_of(meta.class_names));
        doc.set("input_hw", json::Value::array_of(std::vector<int>{meta.input_h, meta.input_w}));
        doc.set("score_thr", a.detector.postprocess.score_thr);
        doc.set("iou_thr", a.detector.postprocess.iou_thr);
        doc.set("max_det", a.detector.postprocess.max_det);
        doc.set("multi_label", a.detector.postprocess.multi_label);
        doc.set("images", images);
        doc.set("skipped", skipped);
        write_text_atomic(a.json_path, doc.dump(1) + "\n");
        std::fprintf(stderr, "wrote %s\n", a.json_path.c_str());
    }
    return 0;
}

// -- bench ----------------------------------------------------------------------------------------
struct Case {
    std::string model_path;
    int threads = 1;
    std::unique_ptr<Detector> detector;
    double load_ms = 0;
    std::vector<double> warmup_ms;
    double first_inference_ms = 0;
    ncnn::Mat blob;  // a ready network input for the model-only timing
    size_t detections = 0;
    std::vector<double> model, pre, inference, post, end_to_end;
};

// A fixed 640x480 scene (gradients and rectangles), the same on every device; a real photo
// (--image) gives a more realistic decode + NMS cost.
Image synthetic_image(int height = 480, int width = 640) {
    Image image;
    image.width = width;
    image.height = height;
    image.bgr.resize(static_cast<size_t>(width) * height * 3);
    uint32_t state = 20240601u;
    auto next = [&]() { state = state * 1664525u + 1013904223u; return state >> 8; };
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x) {
            uint8_t* p = &image.bgr[(static_cast<size_t>(y) * width + x) * 3];
            p[0] = static_cast<uint8_t>(x * 200 / width);
            p[1] = static_cast<uint8_t>(y * 200 / height);
            p[2] = static_cast<uint8_t>((x + y) * 255 / (width + height));
        }
    for (int r = 0; r < 12; ++r) {
        int x0 = next() % width, y0 = next() % height, w = 20 + next() % 200, h = 20 + next() % 200;
        uint8_t color[3] = {static_cast<uint8_t>(next()), static_cast<uint8_t>(next()), static_cast<uint8_t>(next())};
        for (int y = y0; y < std::min(height, y0 + h); ++y)
            for (int x = x0; x < std::min(width, x0 + w); ++x)
                std::memcpy(&image.bgr[(static_cast<size_t>(y) * width + x) * 3], color, 3);
    }
    return image;
}

void end_to_end_once(Case& c, const Image& image, double& pre_ms, double& inf_ms, double& post_ms) {
    using clock = std::chrono::steady_clock;
    WarpMatrix matrix;
    auto t0 = clock::now();
    ncnn::Mat input = c.detector->preprocess(image.view(), matrix);
    auto t1 = clock::now();
    ncnn::Mat output = c.detector->infer(input);
    auto t2 = clock::now();
    std::vector<Detection> dets = c.detector->postprocess(output, matrix, image.height, image.width);
    auto t3 = clock::now();
    pre_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    inf_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
    post_ms = std::chrono::duration<double, std::milli>(t3 - t2).count();
    c.blob = input;
    c.detections = dets.size();
}

json::Value samples_json(const std::vector<double>& v) {
    json::Value out = json::Value::array();
    for (double x : v) out.push_back(std::round(x * 1e4) / 1e4);
    return out;
}

json::Value file_record(const std::string& path) {
    json::Value f = json::Value::object();
    f.set("path", path);
    if (FILE* fp = std::fopen(path.c_str(), "rb")) {
        std::fseek(fp, 0, SEEK_END);
        f.set("bytes", static_cast<int64_t>(std::ftell(fp)));
        std::fclose(fp);
    }
    f.set("sha256", sha256_file(path));
    return f;
}

json::Value case_result(const Case& c, const std::string& precision, bool keep_samples) {
    const ModelMeta& meta = c.detector->meta();
    json::Value model = json::Value::object();
    model.set("name", meta.model_name);
    model.set("path", c.model_path);
    model.set("format", "ncnn");
    json::Value files = json::Value::array();
    files.push_back(file_record(c.model_path));
    std::string weights = sidecar_path(c.model_path);
    weights = weights.substr(0, weights.size() - 5) + ".bin";
    files.push_back(file_record(weights));
    model.set("files", files);
    model.set("num_classes", meta.num_classes());
    model.set("file_precision", meta.precision);

    // the schema's stages, in its order, with this program's samples of each
    const std::pair<const char*, const std::vector<double>*> stage_samples[] = {
        {"model", &c.model}, {"preprocess", &c.pre}, {"inference", &c.inference},
        {"postprocess", &c.post}, {"end_to_end", &c.end_to_end}};
    json::Value stages = json::Value::object();
    for (const auto& [name, samples] : stage_samples) stages.set(name, summarize(*samples));
    double overhead = (stages.find("preprocess")->find("p50_ms")->as_number() + stages.find("postprocess")->find("p50_ms")->as_number()) /
                      stages.find("model")->find("p50_ms")->as_number();

    json::Value warm = json::Value::object();
    warm.set("iterations", c.warmup_ms.size());
    warm.set("first_ms", c.warmup_ms.empty() ? json::Value() : json::Value(c.warmup_ms[0]));
    warm.set("first_inference_ms", c.warmup_ms.empty() ? json::Value() : json::Value(c.first_inference_ms));
    double rest = 0;
    for (size_t i = 1; i < c.warmup_ms.size(); ++i) rest += c.warmup_ms[i];
    warm.set("mean_ms", c.warmup_ms.size() > 1 ? json::Value(rest / (c.warmup_ms.size() - 1)) : json::Value());

    json::Value r = json::Value::object();
    r.set("model", model);
    r.set("backend", "ncnn");
    r.set("engine_version", ncnn_version());
    r.set("device", "CPU");
    r.set("precision", precision);
    r.set("threads", c.threads);
    r.set("input_hw", json::Value::array_of(std::vector<int>{meta.input_h, meta.input_w}));
    r.set("load_ms", c.load_ms);
    r.set("warmup", warm);
    r.set("stages", stages);
    r.set("overhead_ratio", overhead);
    r.set("detections", c.detections);
    if (keep_samples) {
        json::Value samples = json::Value::object();
        for (const auto& [name, values] : stage_samples) samples.set(name, samples_json(*values));
        r.set("samples_ms", samples);
    }
    json::Value notes = json::Value::array();
    notes.push_back("native C++ program (nanoplus_ncnn " NANOPLUS_NCNN_VERSION "): pre-processing, decode and NMS in C++, not the Python runtime");
    r.set("notes", notes);
    return r;
}

int run_bench(Args& a) {
    if (a.positional.empty()) throw UsageError("bench needs at least one MODEL.param");
    if (a.bench_precision != "f32" && a.bench_precision != "native")
        throw UsageError("bench --precision must be f32 (ncnn fp16 off, as `nanoplus bench`) or native (ncnn's defaults), got '" + a.bench_precision + "'");
    if (a.warmup < 1) throw UsageError("--warmup must be at least 1 (the first call is reported apart as the first-run latency)");
    if (a.runs && a.seconds > 0) throw UsageError("give --runs N or --seconds S, not both");
    if (a.runs < 0 || a.seconds < 0) throw UsageError("--runs and --seconds must be positive");
    const int runs = a.runs > 0 ? a.runs : a.seconds > 0 ? 0 : 100;
    const std::string engine_precision = a.bench_precision == "f32" ? "fp32" : "auto";
    a.detector.precision = engine_precision;
    if (a.threads_list.empty()) a.threads_list = {1};

    Image image;
    json::Value image_info = json::Value::object();
    if (a.image.empty()) {
        image = synthetic_image();
        image_info.set("source", "synthetic");
    } else {
        image = read_image(a.image);
        image_info.set("source", a.image);
        image_info.set("sha256", sha256_file(a.image));
    }
    image_info.set("height", image.height);
    image_info.set("width", image.width);

    std::vector<Case> cases;
    for (const std::string& model : a.positional)
        for (int threads : a.threads_list) {
            Case c;
            c.model_path = model;
            c.threads = threads;
            DetectorOptions options = a.detector;
            options.threads = threads;
            auto t0 = std::chrono::steady_clock::now();
            c.detector.reset(new Detector(model, options));
            c.load_ms = ms_since(t0);
            cases.push_back(std::move(c));
        }

    RunConditions conditions;
    conditions.start();
    // warm-up: end to end, round-robin, so one case's lazy initialisation doesn't land in another's measurement
    for (int i = 0; i < a.warmup; ++i)
        for (Case& c : cases) {
            double pre, inf, post;
            end_to_end_once(c, image, pre, inf, post);
            if (i == 0) c.first_inference_ms = inf;
            c.warmup_ms.push_back(pre + inf + post);
        }
    // measured rounds: per case one model-only and one end-to-end iteration, cases interleaved
    auto start = std::chrono::steady_clock::now();
    int rounds = 0;
    while (true) {
        for (Case& c : cases) {
            auto t0 = std::chrono::steady_clock::now();
            c.detector->infer(c.blob);
            c.model.push_back(ms_since(t0));
            double pre, inf, post;
            end_to_end_once(c, image, pre, inf, post);
            c.pre.push_back(pre);
            c.inference.push_back(inf);
            c.post.push_back(post);
            c.end_to_end.push_back(pre + inf + post);
        }
        ++rounds;
        const double elapsed = ms_since(start) / 1000.0;
        if (runs > 0 ? rounds >= runs : elapsed >= a.seconds) break;
    }
    const double duration_s = ms_since(start) / 1000.0;
    json::Value run_conditions = conditions.finish();

    std::printf("%-28s %7s %8s %9s %9s %9s %9s %7s %7s %8s %5s\n", "model", "threads", "precision", "first ms", "model p50", "model p90",
                "e2e p50", "pre", "post", "overhead", "dets");
    json::Value results = json::Value::array();
    for (const Case& c : cases) {
        json::Value r = case_result(c, engine_precision, a.keep_samples);
        const json::Value& st = *r.find("stages");
        auto p = [&](const char* stage, const char* key) { return st.find(stage)->find(key)->as_number(); };
        std::printf("%-28s %7d %8s %9.2f %9.2f %9.2f %9.2f %7.2f %7.2f %7.1f%% %5zu\n", c.detector->meta().model_name.c_str(), c.threads,
                    engine_precision.c_str(), c.warmup_ms[0], p("model", "p50_ms"), p("model", "p90_ms"), p("end_to_end", "p50_ms"),
                    p("preprocess", "p50_ms"), p("postprocess", "p50_ms"), 100.0 * r.find("overhead_ratio")->as_number(), c.detections);
        results.push_back(r);
    }
    const json::Value& cond = run_conditions;
    if (cond.find("other_cpu_cores") && cond.find("other_cpu_cores")->is_number() && cond.find("other_cpu_cores")->as_number() > 0.2)
        std::printf("note: other processes used %.2f cores on average during the run: numbers are preliminary\n",
                    cond.find("other_cpu_cores")->as_number());

    if (!a.json_path.empty()) {
        json::Value generator = json::Value::object();
        generator.set("name", "nanoplus_ncnn bench");
        generator.set("version", NANOPLUS_NCNN_VERSION);
        generator.set("command", a.command_line);

        json::Value post = json::Value::object();
        post.set("score_thr", a.detector.postprocess.score_thr);
        post.set("iou_thr", a.detector.postprocess.iou_thr);
        post.set("max_det", a.detector.postprocess.max_det);

        json::Value run = json::Value::object();
        run.set("warmup", a.warmup);
        run.set("runs", runs > 0 ? json::Value(runs) : json::Value());
        run.set("seconds", runs > 0 ? json::Value() : json::Value(a.seconds));
        run.set("rounds", rounds);
        run.set("interrupted", false);
        run.set("duration_s", std::round(duration_s * 1000) / 1000);
        run.set("interleaved", true);
        run.set("timer", "std::chrono::steady_clock (clock_gettime(CLOCK_MONOTONIC))");
        run.set("precision_policy", a.bench_precision);
        run.set("postprocess", post);
        run.set("image", image_info);
        run.set("conditions", run_conditions);

        json::Value doc = json::Value::object();
        doc.set("schema", "nanoplus-bench");
        doc.set("schema_version", 1);
        doc.set("created_utc", utc_timestamp());
        doc.set("generator", generator);
        doc.set("machine", machine_info(a.label, ncnn_version(), NANOPLUS_NCNN_VERSION));
        doc.set("run", run);
        doc.set("results", results);
        write_text_atomic(a.json_path, doc.dump(1) + "\n");
        std::fprintf(stderr, "wrote %s\n", a.json_path.c_str());
    }
    return 0;
}

// -- info -----------------------------------------------------------------------------------------
int run_info(Args& a) {
    if (a.positional.size() != 1) throw UsageError("info needs exactly one MODEL.param");
    Detector det(a.positional[0], a.detector);
    const ModelMeta& m = det.meta();
    std::printf("model        %s (%s)\n", m.model_name.c_str(), det.meta_source().c_str());
    std::printf("classes      %d (%s%s)\n", m.num_classes(), m.class_names[0].c_str(), m.num_classes() > 1 ? ", ..." : "");
    std::printf("input        %dx%d, %s, %s, %s, mean %.3f %.3f %.3f, std %.3f %.3f %.3f\n", m.input_h, m.input_w, m.resize_mode.c_str(),
                m.color_order.c_str(), m.input_dtype.c_str(), m.mean[0], m.mean[1], m.mean[2], m.std[0], m.std[1], m.std[2]);
    std::string strides;
    for (int s : m.strides) strides += (strides.empty() ? "" : ",") + std::to_string(s);
    std::printf("head         strides %s, reg_max %d, %d points, layout %s, scores %s\n", strides.c_str(), m.reg_max, m.num_points(),
                m.layout.c_str(), m.score_activation == "none" ? "logits" : "sigmoid");
    std::printf("ncnn blobs   %s -> %s (ncnn %s, precision %s, file %s)\n", m.input_name.c_str(), m.output_name.c_str(), ncnn_version().c_str(),
                det.precision().c_str(), m.precision.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (argc >= 2 && (std::strcmp(argv[1], "--version") == 0 || std::strcmp(argv[1], "version") == 0)) {
            std::printf("nanoplus_ncnn %s (ncnn %s)\n", NANOPLUS_NCNN_VERSION, ncnn_version().c_str());
            return 0;
        }
        Args args = parse_args(argc, argv);
        if (args.command == "detect") return run_detect(args);
        if (args.command == "bench") return run_bench(args);
        if (args.command == "info") return run_info(args);
        throw UsageError("unknown command '" + args.command + "'; use detect, bench or info");
    } catch (const UsageError& e) {
        if (*e.what()) std::fprintf(stderr, "error: %s\n\n", e.what());
        std::fputs(kUsage, *e.what() ? stderr : stdout);
        return 2;
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "internal error: %s\n", e.what());
        return 1;
    }
}

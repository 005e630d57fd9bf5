#include "bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#ifdef __linux__
#include <sched.h>
#endif
#ifdef __ANDROID__
#include <sys/system_properties.h>
#endif

#include "metadata.h"

extern char** environ;

namespace nanoplus {

namespace {

// CPU features that decide which kernels an engine picks (runtime/bench.py CPU_FLAGS_OF_INTEREST).
const char* const kFlagsOfInterest[] = {
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "hypervisor", "neon", "asimd", "asimdhp", "asimddp", "fphp", "bf16",
    "i8mm", "sve", "sve2",
};
// Environment variables that change threading or kernels (runtime/bench.py THREAD_ENV_PREFIXES).
const char* const kEnvPrefixes[] = {
    "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "BLIS_", "NUMEXPR_", "VECLIB_", "ONEDNN_", "DNNL_", "OV_",
    "ORT_", "TORCH_", "NCNN_", "OPENCV_",
};
// Thermal zone types that are the CPU (or its SoC), most specific first.
const char* const kThermalTypes[] = {
    "x86_pkg_temp", "cpu-thermal", "cpu_thermal", "cpu0-thermal", "cpu", "soc_thermal", "soc-thermal", "acpitz",
};
const char* const kHwmonNames[] = {"coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal"};

std::string read_small(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return "";
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n");
    size_t b = s.find_last_not_of(std::string(" \t\r\n\0", 5));
    return a == std::string::npos || b < a ? "" : s.substr(a, b - a + 1);
}

bool all_digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

// First value of every key in /proc/cpuinfo (lower-case keys).
std::map<std::string, std::string> cpuinfo_fields() {
    std::map<std::string, std::string> out;
    std::istringstream lines(read_small("/proc/cpuinfo"));
    for (std::string line; std::getline(lines, line);) {
        size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string key = trim(line.substr(0, colon));
        std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        out.emplace(key, trim(line.substr(colon + 1)));
    }
    return out;
}

std::string android_property(const char* name) {
#ifdef __ANDROID__
    char value[PROP_VALUE_MAX] = {0};
    if (__system_property_get(name, value) > 0) return value;
#else
    (void)name;
#endif
    return "";
}

std::string cpu_model(const std::map<std::string, std::string>& info) {
    for (const char* key : {"model name", "cpu model", "hardware", "processor"}) {
        auto it = info.find(key);
        if (it != info.end() && !it->second.empty() && !all_digits(it->second)) return it->second;
    }
    for (const char* prop : {"ro.soc.model", "ro.board.platform", "ro.hardware"}) {
        std::string v = android_property(prop);
        if (!v.empty()) return v;
    }
    auto impl = info.find("cpu implementer");
    if (impl != info.end()) {  // ARM without a name: implementer / part numbers identify the core
        auto part = info.find("cpu part");
        return "ARM implementer " + impl->second + " part " + (part == info.end() ? "?" : part->second);
    }
    return "unknown";
}

std::string device_model() {
    std::string android = android_property("ro.product.model");
    if (!android.empty()) return android;
    for (const char* path : {"/proc/device-tree/model", "/sys/firmware/devicetree/base/model", "/sys/class/dmi/id/product_name"}) {
        std::string v = trim(read_small(path));
        if (!v.empty()) return v;
    }
    return "";
}

int physical_cores() {
    std::istringstream lines(read_small("/proc/cpuinfo"));
    std::set<std::pair<std::string, std::string>> pairs;
    std::string phys, core;
    bool have_core = false;
    for (std::string line; std::getline(lines, line);) {
        size_t colon = line.find(':');
        std::string key = colon == std::string::npos ? trim(line) : trim(line.substr(0, colon));
        if (key == "physical id") phys = trim(line.substr(colon + 1));
        else if (key == "core id") { core = trim(line.substr(colon + 1)); have_core = true; }
        else if (trim(line).empty()) {
            if (have_core) pairs.emplace(phys, core);
            phys.clear(); core.clear(); have_core = false;
        }
    }
    if (have_core) pairs.emplace(phys, core);
    return static_cast<int>(pairs.size());
}

int usable_cores() {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
    return 0;
}

std::string os_distribution() {
    std::istringstream lines(read_small("/etc/os-release"));
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind("PRETTY_NAME=", 0) == 0) {
            std::string v = trim(line.substr(12));
            if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
            return v;
        }
    }
    return "";
}

json::Value nullable(const std::string& s) { return s.empty() ? json::Value() : json::Value(s); }

double percentile(const std::vector<double>& sorted, double q) {
    const double h = (sorted.size() - 1) * q;
    const size_t lo = static_cast<size_t>(std::floor(h));
    const size_t hi = std::min(lo + 1, sorted.size() - 1);
    return sorted[lo] + (h - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

// --- SHA-256 (FIPS 180-4), for the model file hashes the schema records --------------------------
struct Sha256 {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint8_t block[64];
    size_t used = 0;
    uint64_t bits = 0;

    static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

    void compress() {
        static const uint32_t k[64] = {
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
            0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
            0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
            0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
            0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
            0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
            0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
        uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = (uint32_t(block[4 * i]) << 24) | (uint32_t(block[4 * i + 1]) << 16) | (uint32_t(block[4 * i + 2]) << 8) | block[4 * i + 3];
        for (int i = 16; i < 64; ++i) {
            uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int i = 0; i < 64; ++i) {
            uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }

    void update(const uint8_t* data, size_t n) {
        for (size_t i = 0; i < n; ++i) {
            block[used++] = data[i];
            if (used == 64) { compress(); used = 0; }
        }
        bits += 8ull * n;
    }

    std::string hex() {
        uint64_t total = bits;
        uint8_t pad = 0x80;
        update(&pad, 1);
        uint8_t zero = 0;
        while (used != 56) update(&zero, 1);
        for (int i = 7; i >= 0; --i) { uint8_t byte = static_cast<uint8_t>(total >> (8 * i)); update(&byte, 1); }
        char out[65];
        for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h[i]);
        return std::string(out, 64);
    }
};

}  // namespace

json::Value summarize(std::vector<double> samples) {
    json::Value out = json::Value::object();
    if (samples.empty()) return out;
    std::sort(samples.begin(), samples.end());
    double sum = 0;
    for (double v : samples) sum += v;
    const double mean = sum / samples.size();
    double squares = 0;
    for (double v : samples) squares += (v - mean) * (v - mean);
    out.set("n", samples.size());
    out.set("min_ms", samples.front());
    out.set("p50_ms", percentile(samples, 0.50));
    out.set("p90_ms", percentile(samples, 0.90));
    out.set("p99_ms", percentile(samples, 0.99));
    out.set("mean_ms", mean);
    out.set("std_ms", samples.size() > 1 ? std::sqrt(squares / (samples.size() - 1)) : 0.0);
    out.set("max_ms", samples.back());
    out.set("throughput_fps", mean > 0 ? json::Value(1000.0 / mean) : json::Value());
    return out;
}

// Names in `folder` that start with `prefix`, sorted (none when the folder cannot be read).
static std::vector<std::string> sorted_entries(const char* folder, const std::string& prefix) {
    std::vector<std::string> names;
    if (DIR* dir = opendir(folder)) {
        while (dirent* entry = readdir(dir))
            if (std::strncmp(entry->d_name, prefix.c_str(), prefix.size()) == 0) names.push_back(entry->d_name);
        closedir(dir);
    }
    std::sort(names.begin(), names.end());
    return names;
}

bool cpu_temperature(double& celsius, std::string& source) {
    const int n_types = static_cast<int>(sizeof(kThermalTypes) / sizeof(kThermalTypes[0]));
    int best_rank = 1 << 30;
    for (const std::string& zone : sorted_entries("/sys/class/thermal", "thermal_zone")) {
        const std::string base = "/sys/class/thermal/" + zone;
        std::string kind = trim(read_small(base + "/type"));
        std::string value = trim(read_small(base + "/temp"));
        if (value.empty() || !all_digits(value[0] == '-' ? value.substr(1) : value)) continue;
        int rank = n_types;
        for (int i = 0; i < n_types; ++i) if (kind == kThermalTypes[i]) rank = i;
        if (rank < best_rank) {
            best_rank = rank;
            celsius = std::stod(value) / 1000.0;
            source = base + " (" + (kind.empty() ? "unknown type" : kind) + ")";
        }
    }
    if (best_rank <= n_types) return true;
    for (const std::string& hw : sorted_entries("/sys/class/hwmon", "hwmon")) {
        const std::string base = "/sys/class/hwmon/" + hw;
        std::string name = trim(read_small(base + "/name"));
        std::string value = trim(read_small(base + "/temp1_input"));
        if (std::find(std::begin(kHwmonNames), std::end(kHwmonNames), name) != std::end(kHwmonNames) && all_digits(value)) {
            celsius = std::stod(value) / 1000.0;
            source = base + " (" + name + ")";
            return true;
        }
    }
    return false;
}

json::Value machine_info(const std::string& label, const std::string& ncnn_version, const std::string& program_version) {
    const auto info = cpuinfo_fields();
    struct utsname uts;
    uname(&uts);
    std::string flag_text = info.count("flags") ? info.at("flags") : info.count("features") ? info.at("features") : "";
    std::set<std::string> present;
    std::istringstream words(flag_text);
    for (std::string w; words >> w;) present.insert(w);
    json::Value flags = json::Value::array();
    for (const char* f : kFlagsOfInterest) if (present.count(f)) flags.push_back(f);

    const std::string cpu_name = cpu_model(info);
    const std::string board = device_model();
    json::Value cpu = json::Value::object();
    cpu.set("model", cpu_name);
    cpu.set("architecture", std::string(uts.machine));
    long logical = sysconf(_SC_NPROCESSORS_CONF);
    cpu.set("logical_cores", logical > 0 ? json::Value(static_cast<int>(logical)) : json::Value());
    int physical = physical_cores();
    cpu.set("physical_cores", physical > 0 ? json::Value(physical) : json::Value());
    int usable = usable_cores();
    cpu.set("usable_cores", usable > 0 ? json::Value(usable) : json::Value());
    cpu.set("flags", flags);
    cpu.set("virtualized", present.count("hypervisor") > 0);
    std::string governor = trim(read_small("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"));
    std::string max_khz = trim(read_small("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"));
    cpu.set("governor", nullable(governor));
    cpu.set("max_mhz", all_digits(max_khz) ? json::Value(std::stod(max_khz) / 1000.0) : json::Value());

    json::Value os = json::Value::object();
#ifdef __ANDROID__
    os.set("system", "Android");
    os.set("release", uts.release);
    std::string android_release = android_property("ro.build.version.release");
    os.set("distribution", android_release.empty() ? json::Value() : json::Value("Android " + android_release));
#else
    os.set("system", std::string(uts.sysname));
    os.set("release", std::string(uts.release));
    os.set("distribution", nullable(os_distribution()));
#endif

    json::Value software = json::Value::object();
    software.set("nanoplus_ncnn", program_version);
    software.set("ncnn", ncnn_version);
#if defined(__clang__)
    software.set("compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
    software.set("compiler", "gcc " __VERSION__);
#endif

    json::Value env = json::Value::object();
    std::vector<std::string> names;
    for (char** e = environ; e && *e; ++e) {
        std::string entry(*e);
        for (const char* prefix : kEnvPrefixes)
            if (entry.rfind(prefix, 0) == 0) { names.push_back(entry); break; }
    }
    std::sort(names.begin(), names.end());
    for (const std::string& entry : names) {
        size_t eq = entry.find('=');
        env.set(entry.substr(0, eq), eq == std::string::npos ? "" : entry.substr(eq + 1));
    }

    double celsius = 0;
    std::string thermal_source;
    cpu_temperature(celsius, thermal_source);

    json::Value machine = json::Value::object();
    machine.set("label", !label.empty() ? label : !board.empty() ? board : cpu_name);
    machine.set("device_model", nullable(board));
    machine.set("cpu", cpu);
    machine.set("os", os);
    machine.set("python", json::Value());  // a native program
    machine.set("software", software);
    machine.set("env", env);
    machine.set("thermal_source", nullable(thermal_source));
    return machine;
}

RunConditions::CpuTimes RunConditions::cpu_times() {
    CpuTimes t;
    t.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) == 0)
        t.self_s = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec * 1e-6 + usage.ru_stime.tv_sec + usage.ru_stime.tv_usec * 1e-6;
    std::istringstream stat(read_small("/proc/stat"));
    std::string first;
    if (std::getline(stat, first) && first.rfind("cpu ", 0) == 0) {
        std::istringstream fields(first.substr(4));
        std::vector<long long> v;
        for (long long x; fields >> x;) v.push_back(x);
        if (v.size() >= 4) {
            long long idle = v[3] + (v.size() > 4 ? v[4] : 0);
            t.total = 0;
            for (size_t i = 0; i < std::min<size_t>(8, v.size()); ++i) t.total += v[i];
            t.busy = t.total - idle;
            t.steal = v.size() > 7 ? v[7] : 0;
        }
    }
    return t;
}

json::Value RunConditions::loadavg() {
    std::istringstream in(read_small("/proc/loadavg"));
    double a, b, c;
    if (!(in >> a >> b >> c)) return json::Value();
    json::Value out = json::Value::array();
    for (double v : {a, b, c}) out.push_back(std::round(v * 100) / 100);
    return out;
}

void RunConditions::start() {
    load_before_ = loadavg();
    double celsius;
    std::string source;
    temp_before_ = cpu_temperature(celsius, source) ? json::Value(celsius) : json::Value();
    before_ = cpu_times();
}

json::Value RunConditions::finish() {
    const CpuTimes after = cpu_times();
    json::Value out = json::Value::object();
    out.set("loadavg_before", load_before_);
    out.set("loadavg_after", loadavg());
    out.set("other_cpu_cores", json::Value());
    out.set("steal_fraction", json::Value());
    const double wall = after.wall_s - before_.wall_s;
    // /proc/stat counts clock ticks (10 ms): below a second the estimate is mostly rounding
    if (before_.busy >= 0 && after.busy >= 0 && wall >= 1.0) {
        const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
        const double busy_s = (after.busy - before_.busy) / hz;
        const double own_s = after.self_s - before_.self_s;
        out.set("other_cpu_cores", std::round(std::max(0.0, busy_s - own_s) / wall * 1000) / 1000);
        const long long total = after.total - before_.total;
        if (total > 0) out.set("steal_fraction", std::round(double(after.steal - before_.steal) / total * 10000) / 10000);
    }
    double celsius;
    std::string source;
    out.set("cpu_temp_start_c", temp_before_);
    out.set("cpu_temp_end_c", cpu_temperature(celsius, source) ? json::Value(celsius) : json::Value());
    return out;
}

std::string sha256_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return "";
    Sha256 sha;
    std::vector<char> buffer(1 << 16);
    while (f) {
        f.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        sha.update(reinterpret_cast<const uint8_t*>(buffer.data()), static_cast<size_t>(f.gcount()));
    }
    return sha.hex();
}

std::string utc_timestamp() {
    std::time_t now = std::time(nullptr);
    std::tm tm_utc;
    gmtime_r(&now, &tm_utc);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm_utc);
    return buf;
}

void write_text_atomic(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw Error(path + ": cannot write here (does the folder exist and is it writable?)");
        f << text;
        f.flush();
        if (!f) {
            std::remove(tmp.c_str());
            throw Error(path + ": writing failed (disk full?)");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw Error(path + ": cannot replace this file");
    }
}

}  // namespace nanoplus

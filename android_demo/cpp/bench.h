// Benchmark helpers for `nanoplus_ncnn bench`: statistics, the machine description and run
// conditions, written in the project's bench JSON schema (runtime/bench_schema.json, docs/bench.md)
// so that `nanoplus bench --merge` shows phone / Raspberry Pi numbers beside the Python ones.
#pragma once

#include <string>
#include <vector>

#include "json.h"

namespace nanoplus {

// Per-stage summary of samples in ms: n, min/p50/p90/p99/mean/std/max, throughput_fps = 1000 / mean.
// Percentiles interpolate linearly between order statistics (numpy's default, "type 7"); std uses
// n - 1 (0 for one sample). Same definitions as runtime/bench.py summarize().
json::Value summarize(std::vector<double> samples_ms);

// The schema's "machine" object for this device: CPU model and features, cores, OS, board or phone
// model, thread-related environment variables, the temperature sensor used. label "" = default
// (board model, else CPU model).
json::Value machine_info(const std::string& label, const std::string& ncnn_version, const std::string& program_version);

// CPU temperature in degrees Celsius from /sys/class/thermal (Raspberry Pi: cpu-thermal) or hwmon;
// false where the system exposes none (most virtual machines). source: the sensor's path and type.
bool cpu_temperature(double& celsius, std::string& source);

// How busy the machine was with other work while we measured: the schema's run.conditions.
class RunConditions {
public:
    void start();                    // load average, /proc/stat, own CPU time, temperature
    json::Value finish();            // ... and the differences since start()

private:
    struct CpuTimes {
        double wall_s = 0, self_s = 0;
        long long busy = -1, total = -1, steal = -1;
    };
    static CpuTimes cpu_times();
    static json::Value loadavg();

    CpuTimes before_;
    json::Value load_before_;
    json::Value temp_before_;
};

std::string sha256_file(const std::string& path);  // lower-case hex; "" when unreadable
std::string utc_timestamp();                        // 2025-01-02T03:04:05Z

// Writes `text` to path.tmp and renames it into place. Throws Error naming the file.
void write_text_atomic(const std::string& path, const std::string& text);

}  // namespace nanoplus

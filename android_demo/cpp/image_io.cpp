#include "image_io.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>

#include <mat.h>  // ncnn: draw_rectangle_c3, draw_text_c3

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_FAILURE_USERMSG
#include "stb_image.h"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include "stb_image_write.h"

#include "metadata.h"

namespace nanoplus {

namespace {

std::string lower_extension(const std::string& path) {
    size_t dot = path.find_last_of('.');
    size_t slash = path.find_last_of('/');
    if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
    std::string ext = path.substr(dot);
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return ext;
}

void write_to_file(void* context, void* data, int size) {
    std::FILE* f = static_cast<std::FILE*>(context);
    std::fwrite(data, 1, static_cast<size_t>(size), f);
}

}  // namespace

Image read_image(const std::string& path) {
    if (!file_exists(path)) throw Error(path + ": cannot read this image (no such file)");
    int w = 0, h = 0, channels = 0;
    unsigned char* rgb = stbi_load(path.c_str(), &w, &h, &channels, 3);
    if (!rgb) throw Error(path + ": cannot read this image (" + std::string(stbi_failure_reason()) + "; JPEG, PNG, BMP, PPM and TGA are supported)");
    Image image;
    image.width = w;
    image.height = h;
    image.bgr.resize(static_cast<size_t>(w) * h * 3);
    for (size_t i = 0; i < image.bgr.size(); i += 3) {
        image.bgr[i] = rgb[i + 2];
        image.bgr[i + 1] = rgb[i + 1];
        image.bgr[i + 2] = rgb[i];
    }
    stbi_image_free(rgb);
    return image;
}

void draw_detections(Image& image, const std::vector<Detection>& detections, const std::vector<std::string>& class_names) {
    // a fixed, well-spread palette, bytes in B, G, R order
    static const unsigned char palette[][3] = {
        {56, 56, 255}, {151, 157, 255}, {31, 112, 255}, {29, 178, 255}, {49, 210, 207}, {10, 249, 72},
        {23, 204, 146}, {134, 219, 61}, {52, 147, 26}, {187, 212, 0}, {168, 153, 44}, {255, 194, 0},
        {147, 69, 52}, {255, 115, 100}, {236, 24, 0}, {255, 56, 132}, {133, 0, 82}, {255, 56, 203},
    };
    const int n = static_cast<int>(sizeof(palette) / sizeof(palette[0]));
    const int thickness = std::max(1, std::min(image.width, image.height) / 300);
    const int font = std::max(10, std::min(image.width, image.height) / 40);
    for (const Detection& d : detections) {
        const unsigned char* bgr = palette[d.class_id % n];
        // ncnn reads the colour as the 3 bytes of a pixel in memory order (here B, G, R)
        unsigned int color = 0;
        std::memcpy(&color, bgr, 3);
        int x = static_cast<int>(d.x1), y = static_cast<int>(d.y1);
        int w = static_cast<int>(d.x2 - d.x1), h = static_cast<int>(d.y2 - d.y1);
        ncnn::draw_rectangle_c3(image.bgr.data(), image.width, image.height, x, y, w, h, color, thickness);

        char label[128];
        const std::string name = d.class_id < static_cast<int>(class_names.size()) ? class_names[static_cast<size_t>(d.class_id)] : std::to_string(d.class_id);
        std::snprintf(label, sizeof(label), "%s %.2f", name.c_str(), d.score);
        int tw = 0, th = 0;
        ncnn::get_text_drawing_size(label, font, &tw, &th);
        int ty = std::max(0, y - th - 2);
        int tx = std::min(std::max(0, x), std::max(0, image.width - tw - 2));
        ncnn::draw_rectangle_c3(image.bgr.data(), image.width, image.height, tx, ty, tw + 2, th + 2, color, -1);  // filled
        ncnn::draw_text_c3(image.bgr.data(), image.width, image.height, label, tx + 1, ty + 1, font, 0xFFFFFF);
    }
}

void write_image(const Image& image, const std::string& path) {
    const std::string ext = lower_extension(path);
    if (ext != ".jpg" && ext != ".jpeg" && ext != ".png" && ext != ".bmp")
        throw Error(path + ": unsupported image extension '" + ext + "'; use .jpg, .png or .bmp");
    std::vector<uint8_t> rgb(image.bgr.size());
    for (size_t i = 0; i < rgb.size(); i += 3) {
        rgb[i] = image.bgr[i + 2];
        rgb[i + 1] = image.bgr[i + 1];
        rgb[i + 2] = image.bgr[i];
    }
    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw Error(path + ": cannot write here (does the folder exist and is it writable?)");
    int ok;
    if (ext == ".png") ok = stbi_write_png_to_func(write_to_file, f, image.width, image.height, 3, rgb.data(), image.width * 3);
    else if (ext == ".bmp") ok = stbi_write_bmp_to_func(write_to_file, f, image.width, image.height, 3, rgb.data());
    else ok = stbi_write_jpg_to_func(write_to_file, f, image.width, image.height, 3, rgb.data(), 95);
    const bool closed = std::fclose(f) == 0;
    if (!ok || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw Error(path + ": writing the image failed (disk full?)");
    }
}

}  // namespace nanoplus

// Image files for the command-line program (stb_image / stb_image_write; not part of the library:
// an app hands the library its own pixels, e.g. an Android Bitmap).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "postprocess.h"
#include "preprocess.h"

namespace nanoplus {

struct Image {
    int width = 0, height = 0;
    std::vector<uint8_t> bgr;  // (height, width, 3) row-major, B G R

    ImageView view() const { return {bgr.data(), width, height, width * 3, PixelFormat::BGR}; }
};

// JPEG, PNG, BMP, PPM/PGM, TGA ... as 8-bit BGR (grey and alpha images converted). Throws Error naming
// the file when it cannot be read. Note: stb's JPEG decoder is not libjpeg's; the same JPEG can
// decode to slightly different pixels than OpenCV gives (lossless formats decode identically).
Image read_image(const std::string& path);

// Boxes with "name score" labels (ncnn's built-in font), one colour per class.
void draw_detections(Image& image, const std::vector<Detection>& detections, const std::vector<std::string>& class_names);

// .jpg / .jpeg (quality 95), .png or .bmp by the extension; written to a temporary file and renamed
// into place. Throws Error on failure.
void write_image(const Image& image, const std::string& path);

}  // namespace nanoplus

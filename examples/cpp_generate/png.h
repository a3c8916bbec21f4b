// A minimal PNG writer: 8-bit RGB, no compression (deflate "stored" blocks), no dependencies.
#pragma once
#include <cstdint>
#include <string>

// Writes `height` rows of `width` RGB pixels (row-major, 3 bytes each) to `path`; false on I/O error.
bool write_png_rgb(const std::string& path, const uint8_t* rgb, uint32_t width, uint32_t height);

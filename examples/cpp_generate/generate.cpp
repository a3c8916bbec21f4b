// transgan_generate: images from an exported TransGAN generator (.pt2), without Python.
//
//   transgan_generate PACKAGE.pt2 OUT.png [--seeds 0-15,20 | --latents FILE]
//
// Seed s gives the latent torch.randn(latent_dim, generator=torch.Generator().manual_seed(s)) of
// `transgan-fast generate` (libtorch's CPU generator is the same Mersenne Twister), so the grid
// matches `transgan-fast generate --exported PACKAGE.pt2 --seeds ...`. A latents file holds one
// latent per line, latent_dim whitespace-separated numbers.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "png.h"

namespace {

std::vector<int64_t> parse_seeds(const std::string& text) {  // "0-3,7" -> 0 1 2 3 7
  std::vector<int64_t> seeds;
  std::stringstream parts(text);
  for (std::string p; std::getline(parts, p, ',');) {
    if (p.empty()) continue;
    const size_t dash = p.find('-', 1);
    const int64_t a = std::stoll(p.substr(0, dash));
    const int64_t b = dash == std::string::npos ? a : std::stoll(p.substr(dash + 1));
    for (int64_t s = a; s <= b; ++s) seeds.push_back(s);
  }
  if (seeds.empty()) throw std::invalid_argument("--seeds: no seeds in '" + text + "'");
  return seeds;
}

at::Tensor latents_from_seeds(const std::vector<int64_t>& seeds, int64_t dim) {
  std::vector<at::Tensor> rows;
  for (int64_t s : seeds) rows.push_back(at::randn({dim}, at::detail::createCPUGenerator(s)));
  return at::stack(rows);  // (N, dim)
}

at::Tensor latents_from_file(const std::string& path, int64_t dim) {
  std::ifstream f(path);
  if (!f) throw std::invalid_argument("--latents: cannot open '" + path + "'");
  std::vector<float> values;
  int64_t rows = 0;
  for (std::string line; std::getline(f, line);) {
    std::stringstream ss(line);
    const size_t before = values.size();
    for (float v; ss >> v;) values.push_back(v);
    const size_t got = values.size() - before;
    if (got == 0) continue;
    if (got != static_cast<size_t>(dim))
      throw std::invalid_argument("--latents: line " + std::to_string(rows + 1) + " has " +
                                  std::to_string(got) + " numbers; the model needs " + std::to_string(dim));
    ++rows;
  }
  if (rows == 0) throw std::invalid_argument("--latents: no latents in '" + path + "'");
  return at::from_blob(values.data(), {rows, dim}, at::kFloat).clone();
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc != 3 && argc != 5) {
    std::cerr << "usage: " << argv[0] << " PACKAGE.pt2 OUT.png [--seeds 0-15 | --latents FILE]\n";
    return 2;
  }
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  auto meta = loader.get_metadata();
  const int64_t dim = std::stoll(meta.at("transgan_fast.latent_dim"));
  const std::string batch = meta.at("transgan_fast.batch");  // "dynamic" or the fixed batch

  const std::string mode = argc == 5 ? argv[3] : "--seeds";
  at::Tensor z;
  if (mode == "--seeds") z = latents_from_seeds(parse_seeds(argc == 5 ? argv[4] : "0-15"), dim);
  else if (mode == "--latents") z = latents_from_file(argv[4], dim);
  else throw std::invalid_argument("unknown option '" + mode + "'; expected --seeds or --latents");

  // A fixed-batch package runs in chunks of its batch, the last chunk padded with zeros.
  const int64_t n = z.size(0), chunk = batch == "dynamic" ? n : std::stoll(batch);
  std::vector<at::Tensor> images;
  for (int64_t i = 0; i < n; i += chunk) {
    at::Tensor part = z.slice(0, i, std::min(n, i + chunk));
    const int64_t got = part.size(0);
    if (got < chunk) part = at::cat({part, at::zeros({chunk - got, dim})});
    images.push_back(loader.run({part.contiguous()})[0].slice(0, 0, got));
  }
  at::Tensor img = at::cat(images);  // (N, 3, S, S) in [-1, 1]

  // The grid of transgan_fast.train.logging.save_grid: ceil(sqrt(N)) per row, no padding.
  const int64_t S = img.size(2), nrow = std::max<int64_t>(1, std::ceil(std::sqrt(double(n))));
  const int64_t rows = (n + nrow - 1) / nrow;
  at::Tensor u8 = img.clamp(-1, 1).add(1).mul(127.5).round().to(at::kByte);
  at::Tensor grid = at::zeros({rows * S, nrow * S, 3}, at::kByte);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / nrow, c = i % nrow;
    grid.slice(0, r * S, (r + 1) * S).slice(1, c * S, (c + 1) * S).copy_(u8[i].permute({1, 2, 0}));
  }
  if (!write_png_rgb(argv[2], grid.data_ptr<uint8_t>(), nrow * S, rows * S)) {
    std::cerr << "error: cannot write " << argv[2] << "\n";
    return 1;
  }
  std::cout << "wrote " << n << " images (" << S << "x" << S << ") to " << argv[2] << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}

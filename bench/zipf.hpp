// A Zipf law over [0, n) (Gray et al., "Quickly generating billion-record
// synthetic databases", as YCSB draws it), shared by the benchmarks. Ranks are
// scrambled so the hot items spread over the range instead of sitting at its
// start. Each caller brings its own random numbers: at() maps a uniform draw.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace farmem::bench {

class Zipf {
 public:
  Zipf(std::uint64_t n, double theta) : n_(n), theta_(theta) {
    for (std::uint64_t i = 1; i <= n; ++i) zetan_ += 1.0 / std::pow(static_cast<double>(i), theta);
    const double zeta2 = 1.0 + 1.0 / std::pow(2.0, theta);
    alpha_ = 1.0 / (1.0 - theta);
    eta_ = (1.0 - std::pow(2.0 / static_cast<double>(n), 1.0 - theta)) / (1.0 - zeta2 / zetan_);
  }
  // The item for u, drawn uniformly from [0, 1).
  std::uint64_t at(double u) const {
    const double uz = u * zetan_;
    std::uint64_t rank;
    if (uz < 1.0) rank = 0;
    else if (uz < 1.0 + std::pow(0.5, theta_)) rank = 1;
    else rank = static_cast<std::uint64_t>(static_cast<double>(n_) * std::pow(eta_ * u - eta_ + 1.0, alpha_));
    return (std::min(rank, n_ - 1) * 0x9E3779B97F4A7C15ull) % n_;
  }

 private:
  std::uint64_t n_;
  double theta_, zetan_ = 0, alpha_ = 0, eta_ = 0;
};

}  // namespace farmem::bench

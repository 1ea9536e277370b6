// The hook through which a loss reduces a batch statistic over data-parallel workers: it returns
// the mean of its argument over the ranks (identity — no hook — in a single process).
#pragma once
#include <torch/torch.h>

#include <functional>

namespace onestage {

using MeanReducer = std::function<torch::Tensor(const torch::Tensor&)>;

}  // namespace onestage

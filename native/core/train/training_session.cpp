#include "core/train/training_session.h"

#include <cstdio>
#include <random>

#include "core/errors.h"

namespace onestage {

TrainingSession::TrainingSession(std::shared_ptr<RetinaNetDetector> detector, const OptimizerOptions& o, const RetinaLossOptions& loss)
    : detector_(std::move(detector)), options_(o), loss_(std::make_unique<RetinaLoss>(loss)) {
  for (const auto& p : detector_->net()->parameters())
    if (p.requires_grad()) params_.push_back(p);
  if (!(o.lr > 0)) throw RangeError("optimizer lr must be positive");
  if (o.type == "sgd") {
    optimizer_ = std::make_unique<torch::optim::SGD>(
        params_, torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weightDecay).nesterov(o.nesterov));
  } else if (o.type == "adamw") {
    optimizer_ = std::make_unique<torch::optim::AdamW>(
        params_, torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(o.weightDecay));
  } else {
    throw RangeError("Expected 'sgd' or 'adamw' for optimizer.type but received '" + o.type + "'");
  }
}

StepResult TrainingSession::step(const torch::Tensor& images, const torch::Tensor& annotations, double lr) {
  if (!(lr > 0) || !std::isfinite(lr)) throw RangeError("lr must be a positive finite number");
  std::lock_guard<std::mutex> lock(detector_->mutex());
  const c10::DeviceGuard guard(detector_->device());
  for (auto& group : optimizer_->param_groups()) group.options().set_lr(lr);
  auto& net = detector_->net();
  net->train(true);
  const auto out = net->forward(images.to(detector_->device()));
  std::vector<int64_t> levels;
  for (const auto& p : out.pyramid) levels.push_back(p.size(2) * p.size(3) * net->config().anchors.anchorsPerLocation());
  const auto parts = loss_->forward(out.classification, out.regression, out.anchors, annotations.to(detector_->device()), levels);
  const auto total = parts.cls + parts.reg;
  StepResult r;
  // one host synchronisation per step, for the values reported and the finiteness check
  const auto values = torch::stack({parts.cls.detach().reshape({}), parts.reg.detach().reshape({})}).to(torch::kCPU, torch::kFloat64);
  r.cls = values[0].item<double>();
  r.reg = values[1].item<double>();
  r.total = r.cls + r.reg;
  optimizer_->zero_grad();
  if (!std::isfinite(r.total)) {
    r.skipped = true;
    r.reason = "non-finite loss (cls " + std::to_string(r.cls) + ", reg " + std::to_string(r.reg) + ")";
    return r;
  }
  total.backward();
  const double maxNorm = options_.clipGradNorm > 0 ? options_.clipGradNorm : std::numeric_limits<double>::infinity();
  r.gradNorm = torch::nn::utils::clip_grad_norm_(params_, maxNorm);
  if (!std::isfinite(r.gradNorm)) {
    optimizer_->zero_grad();
    r.skipped = true;
    r.reason = "non-finite gradient norm";
    return r;
  }
  optimizer_->step();
  return r;
}

void TrainingSession::saveOptimizer(const std::string& path) {
  std::lock_guard<std::mutex> lock(detector_->mutex());
  std::random_device rd;
  const std::string tmp = path + ".tmp-" + std::to_string(rd());
  torch::serialize::OutputArchive archive;
  optimizer_->save(archive);
  archive.save_to(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path);
  }
}

void TrainingSession::loadOptimizer(const std::string& path) {
  std::lock_guard<std::mutex> lock(detector_->mutex());
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path, detector_->device());
    optimizer_->load(archive);
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    throw std::runtime_error(path + ": not an optimizer state of this model and optimizer (" + msg.substr(0, msg.find('\n')) + ")");
  }
}

}  // namespace onestage

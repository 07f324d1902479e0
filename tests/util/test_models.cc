#include "tests/util/test_models.h"

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <string_view>
#include <vector>

#include "common/model_maker/make_model.h"

namespace moe::testing {
namespace {

std::mutex mu;
std::vector<std::string>* temp_dirs = nullptr;

void RemoveTempDirs() {
  if (temp_dirs == nullptr) return;
  for (const std::string& dir : *temp_dirs) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
}

}  // namespace

std::string MakeTempDir(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(mu);
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    std::cerr << "cannot create a temporary directory from " << pattern << std::endl;
    std::abort();
  }
  if (temp_dirs == nullptr) {
    temp_dirs = new std::vector<std::string>();
    std::atexit(RemoveTempDirs);
  }
  temp_dirs->push_back(buf.data());
  return buf.data();
}

const std::string& TestModelDir(const std::string& preset, const std::string& dtype) {
  static std::map<std::string, std::string>* dirs = new std::map<std::string, std::string>();
  const std::string key = preset + "/" + dtype;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = dirs->find(key);
    if (it != dirs->end()) return it->second;
  }
  const std::string dir = MakeTempDir("moe-model-" + preset + "-" + dtype) + "/model";
  model_maker::MakeModelOptions options;
  options.preset = preset;
  if (preset.ends_with(kSkewedSuffix)) {  // test_models.h
    options.preset = preset.substr(0, preset.size() - std::string_view(kSkewedSuffix).size());
    options.hot_experts = 4;
    options.hot_expert_gain = 4.0f;
  }
  options.out_dir = dir;
  options.dtype = dtype;
  options.seed = 0;
  const absl::Status status = model_maker::MakeModel(options);
  if (!status.ok()) {
    std::cerr << "make-model " << key << " failed: " << status << std::endl;
    std::abort();
  }
  std::lock_guard<std::mutex> lock(mu);
  return (*dirs)[key] = dir;
}

}  // namespace moe::testing

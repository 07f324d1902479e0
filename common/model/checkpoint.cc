#include "common/model/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace moe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

// A shard name from the index must be a plain file name inside the model directory.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
         name != "." && name != "..";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  auto checkpoint = std::unique_ptr<Checkpoint>(new Checkpoint());
  const fs::path dir(model_dir);
  const fs::path index_path = dir / kIndexName;
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    if (!in) return absl::InternalError(absl::StrCat(index_path.string(), ": cannot read"));
    const std::string text = ss.str();
    json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": not a valid JSON object"));
    }
    auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": missing weight_map object"));
    }
    absl::flat_hash_map<std::string, const SafetensorsFile*> opened;
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path.string(), ": weight_map entry for '", it.key(), "' is not a string"));
      }
      const std::string file_name = it.value().get<std::string>();
      if (!IsPlainFileName(file_name)) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map entry for '",
                                                       it.key(), "' names '", file_name,
                                                       "', which is not a file in the model directory"));
      }
      auto [slot, inserted] = opened.try_emplace(file_name, nullptr);
      if (inserted) {
        ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                         SafetensorsFile::Open((dir / file_name).string()));
        slot->second = file.get();
        checkpoint->files_.push_back(std::move(file));
      }
      const SafetensorsFile* file = slot->second;
      auto tensor_it = file->tensors().find(it.key());
      if (tensor_it == file->tensors().end()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map puts '", it.key(),
                                                       "' in ", file_name, ", which does not contain it"));
      }
      checkpoint->tensors_.emplace(it.key(), std::make_pair(file, tensor_it->second));
    }
    return checkpoint;
  }
  const fs::path single = dir / kSingleName;
  if (!fs::exists(single, ec)) {
    return absl::NotFoundError(
        absl::StrCat(model_dir, ": neither ", kIndexName, " nor ", kSingleName, " exists"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single.string()));
  for (const auto& [name, view] : file->tensors()) {
    checkpoint->tensors_.emplace(name, std::make_pair(file.get(), view));
  }
  checkpoint->files_.push_back(std::move(file));
  return checkpoint;
}

absl::StatusOr<TensorView> Checkpoint::Get(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' is not in the checkpoint"));
  }
  return it->second.second;
}

bool Checkpoint::Contains(std::string_view name) const {
  return tensors_.contains(std::string(name));
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, unused] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace moe::model

// Compares our tokenizer with the npm oracle: for every corpus line, Encode(text) must equal the
// oracle's ids exactly, and Decode(Encode(text)) must equal the oracle's NFC(text).
// Usage: tokenizer_oracle_check CORPUS.jsonl EXPECTED.jsonl   (exit 0: all agree)
#include <fstream>
#include <iostream>
#include <string>

#include "common/tokenizer/qwen3_tokenizer_files.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

std::string IdsToString(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " CORPUS.jsonl EXPECTED.jsonl\n";
    return 2;
  }
  auto json = moe::tokenizer::EmbeddedQwen3TokenizerJson();
  if (!json.ok()) {
    std::cerr << json.status() << "\n";
    return 2;
  }
  auto tokenizer = moe::tokenizer::Tokenizer::FromJson(*json);
  if (!tokenizer.ok()) {
    std::cerr << tokenizer.status() << "\n";
    return 2;
  }
  std::ifstream corpus(argv[1]), expected(argv[2]);
  if (!corpus || !expected) {
    std::cerr << "cannot open " << argv[1] << " or " << argv[2] << "\n";
    return 2;
  }
  std::string corpus_line, expected_line;
  int line = 0, samples = 0, id_mismatches = 0, roundtrip_mismatches = 0;
  while (std::getline(corpus, corpus_line)) {
    ++line;
    if (corpus_line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (!std::getline(expected, expected_line)) {
      std::cerr << "expected file ends before corpus line " << line << "\n";
      return 1;
    }
    const auto sample = nlohmann::json::parse(corpus_line, nullptr, false);
    const auto want = nlohmann::json::parse(expected_line, nullptr, false);
    if (sample.is_discarded() || want.is_discarded() || !sample.contains("text") || !want.contains("ids") ||
        !want.contains("nfc")) {
      std::cerr << "line " << line << ": malformed corpus or expected line\n";
      return 1;
    }
    ++samples;
    const std::string text = sample["text"].get<std::string>();
    const std::vector<int32_t> want_ids = want["ids"].get<std::vector<int32_t>>();
    auto ids = (*tokenizer)->Encode(text);
    if (!ids.ok()) {
      std::cerr << "line " << line << ": Encode failed: " << ids.status() << "\n";
      ++id_mismatches;
      continue;
    }
    if (*ids != want_ids) {
      ++id_mismatches;
      std::cerr << "line " << line << ": ids differ for " << nlohmann::json(text).dump()
                << "\n  ours:   " << IdsToString(*ids) << "\n  oracle: " << IdsToString(want_ids) << "\n";
    }
    const std::string decoded = (*tokenizer)->Decode(*ids);
    if (decoded != want["nfc"].get<std::string>()) {
      ++roundtrip_mismatches;
      std::cerr << "line " << line << ": decode(encode(x)) != NFC(x): " << nlohmann::json(decoded).dump()
                << " vs " << want["nfc"].dump() << "\n";
    }
  }
  std::cout << samples << " samples, " << id_mismatches << " id mismatches, " << roundtrip_mismatches
            << " round-trip mismatches\n";
  return (samples > 0 && id_mismatches == 0 && roundtrip_mismatches == 0) ? 0 : 1;
}

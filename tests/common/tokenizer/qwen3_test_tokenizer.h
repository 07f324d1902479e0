// The real Qwen3 tokenizer, loaded once per test process from the copy embedded in moe_tokenizer.
#ifndef MOE_TESTS_COMMON_TOKENIZER_QWEN3_TEST_TOKENIZER_H_
#define MOE_TESTS_COMMON_TOKENIZER_QWEN3_TEST_TOKENIZER_H_

#include <memory>

#include "common/tokenizer/qwen3_tokenizer_files.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace moe::tokenizer {

inline const Tokenizer& Qwen3() {
  static const Tokenizer* const tokenizer = [] {
    auto json = EmbeddedQwen3TokenizerJson();
    EXPECT_TRUE(json.ok()) << json.status();
    auto tok = Tokenizer::FromJson(*json);
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok->release();
  }();
  return *tokenizer;
}

}  // namespace moe::tokenizer

#endif  // MOE_TESTS_COMMON_TOKENIZER_QWEN3_TEST_TOKENIZER_H_

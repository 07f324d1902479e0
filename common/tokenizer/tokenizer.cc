#include "common/tokenizer/tokenizer.h"

#include <queue>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/absl_compat.h"
#include "common/tokenizer/nfc.h"
#include "common/tokenizer/utf8.h"

namespace moe::tokenizer {
namespace {

// Pieces longer than this are not cached (rare, and they would bloat the cache); the cache is
// cleared when it reaches kMaxCacheEntries so memory stays bounded on adversarial input.
constexpr size_t kMaxCachedPieceBytes = 128;
constexpr size_t kMaxCacheEntries = 1 << 20;

}  // namespace

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  RETURN_IF_ERROR(ValidateUtf8(text));
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  size_t segment_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    int32_t id;
    const size_t len =
        added_first_byte_[static_cast<uint8_t>(text[pos])] ? MatchAddedToken(text, pos, &id) : 0;
    if (len == 0) {
      ++pos;
      continue;
    }
    RETURN_IF_ERROR(EncodeText(text.substr(segment_start, pos - segment_start), &ids));
    ids.push_back(id);
    pos += len;
    segment_start = pos;
  }
  RETURN_IF_ERROR(EncodeText(text.substr(segment_start), &ids));
  return ids;
}

size_t Tokenizer::MatchAddedToken(std::string_view text, size_t pos, int32_t* id) const {
  const std::string_view rest = text.substr(pos);
  for (const AddedToken& token : added_tokens_) {  // longest first
    if (rest.starts_with(token.content)) {
      *id = token.id;
      return token.content.size();
    }
  }
  return 0;
}

absl::Status Tokenizer::EncodeText(std::string_view text, std::vector<int32_t>* ids) const {
  if (text.empty()) return absl::OkStatus();
  std::string normalized;
  if (nfc_) {
    absl::StatusOr<std::string_view> nfc = NormalizeNfc(text, &normalized);
    if (!nfc.ok()) return nfc.status();
    text = *nfc;
  }
  std::vector<std::string_view> pieces;
  RETURN_IF_ERROR(splitter_->Split(text, &pieces));
  for (std::string_view piece : pieces) EncodePiece(piece, ids);
  return absl::OkStatus();
}

void Tokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_token_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    absl::MutexLock lock(&cache_mutex_);
    const auto it = cache_.find(AbslView(piece));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  Bpe(piece, ids);
  if (cacheable) {
    absl::MutexLock lock(&cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.try_emplace(std::string(piece), ids->begin() + static_cast<ptrdiff_t>(first), ids->end());
  }
}

// Byte-level BPE of one piece: start from one symbol per byte and repeatedly merge the adjacent
// pair of lowest merge rank (leftmost first among equals), as tokenizers' BPE::merge_word does.
void Tokenizer::Bpe(std::string_view piece, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index
    int32_t left_id;
    int32_t right_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  const int32_t n = static_cast<int32_t>(piece.size());
  std::vector<Symbol> symbols(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_token_id_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) {
      queue.push({it->second.rank, left, symbols[left].id, symbols[right].id});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    // Stale entries: a symbol that changed id has grown, so ids identify the current pair.
    if (left.id != c.left_id || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != c.right_id) continue;
    left.id = merges_.find(PairKey(c.left_id, c.right_id))->second.result_id;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = c.left;
    consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) AppendTokenBytes(id, skip_special_tokens, &bytes);
  std::string text;
  text.reserve(bytes.size());
  AppendUtf8Replacing(bytes, /*hold_incomplete_tail=*/false, &text);
  return text;
}

void Tokenizer::AppendTokenBytes(int32_t id, bool skip_special_tokens, std::string* out) const {
  if (!IsValidId(id)) return;
  if (skip_special_tokens && special_[id]) return;
  out->append(token_bytes_[id]);
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (const auto it = added_by_content_.find(AbslView(token)); it != added_by_content_.end()) {
    return it->second;
  }
  if (const auto it = vocab_.find(AbslView(token)); it != vocab_.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string_view> Tokenizer::IdToToken(int32_t id) const {
  if (!IsValidId(id)) return std::nullopt;
  return tokens_[id];
}

absl::Status Tokenizer::ValidateIds(std::span<const int32_t> ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!IsValidId(ids[i])) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at position ", i,
                                                     " is not in the vocabulary (size ", vocab_size(), ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moe::tokenizer

#include "services/router/output_processor.h"

namespace moe::router {

ThinkTokens ThinkTokens::FromTokenizer(const tokenizer::Tokenizer& tokenizer) {
  ThinkTokens t;
  t.begin = tokenizer.TokenToId("<think>");
  t.end = tokenizer.TokenToId("</think>");
  if (!t.begin.has_value() || !t.end.has_value()) return ThinkTokens{};
  return t;
}

bool ThinkTokens::PromptOpensThinking(const std::vector<int32_t>& prompt) const {
  if (!begin.has_value()) return false;
  for (auto it = prompt.rbegin(); it != prompt.rend(); ++it) {
    if (*it == *end) return false;
    if (*it == *begin) return true;
  }
  return false;
}

OutputProcessor::OutputProcessor(const tokenizer::Tokenizer& tokenizer, bool skip_special_tokens,
                                 ThinkTokens think, bool start_in_reasoning,
                                 const std::vector<std::string>& stops, bool parse_tool_calls)
    : detokenizer_(tokenizer, skip_special_tokens),
      think_(think),
      in_reasoning_(start_in_reasoning && think.begin.has_value()),
      answer_stops_(stops),
      reasoning_stops_(stops) {
  if (parse_tool_calls) tool_calls_.emplace();
}

void OutputProcessor::AppendAnswer(std::string_view text, OutputDelta* delta) {
  if (tool_calls_.has_value()) {
    tool_calls_->Push(text, &delta->text, &delta->tool_calls);
  } else {
    delta->text.append(text);
  }
}

void OutputProcessor::FinishToolCalls(OutputDelta* delta) {
  if (tool_calls_.has_value()) tool_calls_->Finish(&delta->text);
}

void OutputProcessor::Emit(const std::string& piece, OutputDelta* delta) {
  if (piece.empty() || stopped_) return;
  StopStringMatcher& matcher = in_reasoning_ ? reasoning_stops_ : answer_stops_;
  StopStringMatcher::Result r = matcher.Push(piece);
  if (in_reasoning_) {
    delta->reasoning_text.append(r.text);
  } else {
    AppendAnswer(r.text, delta);
  }
  if (r.matched.has_value()) {
    stopped_ = true;
    delta->matched_stop = r.matched;
    // Nothing follows a stop string: a tool call it cut off is content.
    if (!in_reasoning_) FinishToolCalls(delta);
  }
}

void OutputProcessor::FlushChannel(OutputDelta* delta) {
  Emit(detokenizer_.Flush(), delta);
  if (stopped_) return;
  if (in_reasoning_) {
    delta->reasoning_text.append(reasoning_stops_.Flush());
  } else {
    AppendAnswer(answer_stops_.Flush(), delta);
    FinishToolCalls(delta);
  }
}

bool OutputProcessor::Add(int32_t id, OutputDelta* delta) {
  if (stopped_) return false;
  if (think_.begin.has_value() && (id == *think_.begin || id == *think_.end)) {
    const bool to_reasoning = id == *think_.begin;
    if (to_reasoning != in_reasoning_) {
      FlushChannel(delta);
      in_reasoning_ = to_reasoning;
    }
    return true;
  }
  Emit(detokenizer_.Add(id), delta);
  return true;
}

void OutputProcessor::Finish(OutputDelta* delta) {
  if (stopped_) return;
  FlushChannel(delta);
}

}  // namespace moe::router

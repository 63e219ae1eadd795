// Retrieval: byte-level document pairs standing in for LRA's AAN citation task (Tay et al. 2021,
// §2.2.3): does the pair share a topic? Each document is encoded separately (dual encoder, no
// cross attention), so the model must compress a long byte sequence into a vector that keeps the
// topic.
//
// Vocabulary (fixed, the same for every seed): 5,000 common pseudo-words of 2-6 letters with Zipf
// frequencies rank^-1.1, shared by all documents, and num_topics topics of 6 rare pseudo-words of
// 7-12 letters each (all distinct). A document is a Zipf stream of common words in sentences, with
// inserted at uniformly random places:
//  * its main topic's fingerprint: 4 of the topic's 6 words, each 2-3 times;
//  * 2 distractor topics (other than its main topic): one word of each, once.
// A related pair (label 1) has the same main topic (so the two fingerprints share at least 2 words);
// an unrelated pair (label 0) has different main topics, and with probability 0.5 the second
// document's distractors include a word of the first one's main topic (a shared rare word that is
// not a shared topic). So, as tests/test_tasks.cpp checks from the text alone: the rare words (7+
// letters) that occur at least twice in both documents number >= 2 for related pairs and 0 for
// unrelated ones. Classes are balanced exactly (one of each in every pair of consecutive indices,
// in random order).
// Tokens are bytes + 1 (0 = padding; vocabulary 257); `text` is "document 1 <TAB> document 2".
// One Philox stream per pair, (seed, data, kRetrievalStream, split).child(index).
//
// source=lra_files reads LRA's AAN release instead (new_aan_pairs.{train,eval,test}.tsv, see
// lra_loaders.hpp): each text cut to 10,000 bytes as LRA does, then to max_length.
#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "io/lra_loaders.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"
#include "lexicon.hpp"
#include "preset_sizes.hpp"

namespace {

using ab::Json;

constexpr uint64_t kRetrievalStream = 0x52657472696576ull;  // "Retriev"
constexpr ab::preset_sizes::Sizes kSizes = {{20000, 2000, 2000}, {147086, 18090, 17437}};
constexpr uint64_t kTopicKey = 0x546F70696373ull;           // "Topics"
constexpr int kTopicWords = 6, kFingerprint = 4, kDistractorTopics = 2;

class Retrieval : public ab::preset_sizes::Task {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    return ab::task_spec(
        "retrieval", "Byte-level document pairs (AAN stand-in): do the two documents share a topic? (dual encoder)",
        "Tay et al. 2021, Long Range Arena (byte-level document retrieval); synthetic stand-in",
        ab::preset_sizes::after(
            {
                ab::enum_param(
                    "preset", "small", {"small", "lra"},
                    "defaults of the null parameters: small = documents of 512-1,024 bytes, 20,000 / 2,000 / "
                    "2,000 pairs; lra = 1,024-4,000 bytes (LRA's 4,000 per document) and AAN's split sizes "
                    "147,086 / 18,090 / 17,437"),
                null_int_param("min_length", "shortest generated document in bytes; null = 512 (small) / 1024 (lra)",
                               64, 1 << 24),
                null_int_param("max_length", "bytes per document = seq_len; null = 1024 (small) / 4000 (lra)", 256,
                               1 << 24),
                ab::int_param("num_topics", 256, "topics (each a fingerprint of 6 rare words)", 4, 100000),
                ab::enum_param("source", "generated", {"generated", "lra_files"},
                               "generated = the generator above; lra_files = LRA's AAN pairs from `path`"),
                ab::ParamSpec{"path",
                              ab::ParamType::string,
                              Json(""),
                              "with source=lra_files: the directory holding new_aan_pairs.{train,eval,test}.tsv "
                              "(lra_release/tsv_data)",
                              -1e300,
                              1e300,
                              {}},
            },
            "pairs", kSizes, "lra", {"all in the file", "all in the file", "all in the file"}));
  }

  Retrieval(const Json& p, uint64_t seed) : Task("retrieval", p, seed, "lra") {
    max_len_ = preset_default("max_length", 1024, 4000).get<int64_t>();
    files_ = p.at("source") == "lra_files";
    if (files_) {
      open_files();
      return;
    }
    if (!p.at("path").get<std::string>().empty())
      throw ab::UsageError("task 'retrieval': path is only used with source=lra_files; set source=lra_files or drop "
                           "path");
    min_len_ = preset_default("min_length", 512, 1024).get<int64_t>();
    resolve_sizes(kSizes);
    topics_ = p.at("num_topics").get<int64_t>();
    if (min_len_ > max_len_)
      throw ab::UsageError(
          fmt::format("task 'retrieval': min_length = {} must be <= max_length = {}", min_len_, max_len_));
    build_vocabulary();
  }

  ab::TaskKind kind() const override { return ab::TaskKind::pair_classify; }
  int64_t vocab_size() const override { return 257; }
  int64_t num_classes() const override { return 2; }
  int64_t seq_len() const override { return max_len_; }
  Json stats() const override {
    if (files_) return {{"source", "lra_files"}, {"pairs", {sizes_[0], sizes_[1], sizes_[2]}}};
    return {{"topics", topics_}, {"topic_words", kTopicWords}, {"fingerprint_words", kFingerprint},
            {"lexicon_size", ab::lexicon::kSize}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    const int k = checked_split(s, index);
    ab::Example ex;
    if (files_) {
      const ab::lra::AanPair pair = aan_[k]->read(index);
      ex.input = encode(pair.text1);
      ex.input2 = encode(pair.text2);
      ex.target = {pair.label};
      ex.text = pair.text1.substr(0, static_cast<size_t>(max_len_)) + "\t" +
                pair.text2.substr(0, static_cast<size_t>(max_len_));
      return ex;
    }
    const ab::RngStream base = split_stream(kRetrievalStream, k);
    ab::RngStream order = base.child(static_cast<uint64_t>(index / 2) | (uint64_t{1} << 63));
    const int label = static_cast<int>((order.below(2) + static_cast<uint64_t>(index % 2)) % 2);
    ab::RngStream rng = base.child(static_cast<uint64_t>(index));
    const int64_t t1 = static_cast<int64_t>(rng.below(static_cast<uint64_t>(topics_)));
    int64_t t2 = t1;
    if (label == 0) {
      t2 = static_cast<int64_t>(rng.below(static_cast<uint64_t>(topics_ - 1)));
      if (t2 >= t1) ++t2;
    }
    const bool hard = label == 0 && rng.below(2) == 0;  // doc 2 borrows one word of doc 1's topic
    const std::string d1 = document(rng, t1, -1), d2 = document(rng, t2, hard ? t1 : -1);
    ex.input = encode(d1);
    ex.input2 = encode(d2);
    ex.target = {label};
    ex.text = d1 + "\t" + d2;
    return ex;
  }

 private:
  std::vector<int32_t> encode(const std::string& text) const {
    // LRA cuts each text to 10,000 characters before encoding, then to max_length bytes.
    const size_t n = std::min<size_t>({text.size(), 10000, static_cast<size_t>(max_len_)});
    std::vector<int32_t> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(static_cast<uint8_t>(text[i])) + 1;
    return out;
  }

  void build_vocabulary() {  // the common words: `text`'s lexicon stream, cue words not skipped
    std::set<std::string> seen;
    common_ = ab::lexicon::common_words(seen);
    cdf_ = ab::lexicon::zipf_cdf();
    ab::RngStream trng(0, ab::Purpose::data, kTopicKey);
    rare_.reserve(static_cast<size_t>(topics_ * kTopicWords));
    while (static_cast<int64_t>(rare_.size()) < topics_ * kTopicWords) {
      std::string w = ab::lexicon::syllable_word(trng, 3 + static_cast<int>(trng.below(2)));
      if (w.size() < 7 || w.size() > 12) continue;
      if (seen.insert(w).second) rare_.push_back(w);
    }
  }

  const std::string& common_word(ab::RngStream& rng) const {
    return common_[static_cast<size_t>(ab::lexicon::zipf_rank(cdf_, rng))];
  }
  const std::string& topic_word(int64_t topic, int j) const {
    return rare_[static_cast<size_t>(topic * kTopicWords + j)];
  }

  // One document: common words with the main topic's fingerprint and distractor words inserted.
  std::string document(ab::RngStream& rng, int64_t topic, int64_t borrowed) const {
    const int64_t target = min_len_ + static_cast<int64_t>(rng.below(static_cast<uint64_t>(max_len_ - min_len_ + 1)));
    std::vector<const std::string*> words;
    int64_t bytes = 0;
    while (bytes < target) {
      words.push_back(&common_word(rng));
      bytes += static_cast<int64_t>(words.back()->size()) + 1;
    }
    std::vector<const std::string*> inserts;
    std::array<int, kTopicWords> pick{};
    for (int j = 0; j < kTopicWords; ++j) pick[j] = j;
    for (int j = 0; j < kFingerprint; ++j) std::swap(pick[j], pick[j + rng.below(kTopicWords - j)]);
    for (int j = 0; j < kFingerprint; ++j) {
      const int times = 2 + static_cast<int>(rng.below(2));
      for (int t = 0; t < times; ++t) inserts.push_back(&topic_word(topic, pick[j]));
    }
    std::vector<int64_t> others;
    if (borrowed >= 0) others.push_back(borrowed);
    while (static_cast<int>(others.size()) < kDistractorTopics) {
      const int64_t u = static_cast<int64_t>(rng.below(static_cast<uint64_t>(topics_)));
      if (u != topic && std::find(others.begin(), others.end(), u) == others.end()) others.push_back(u);
    }
    for (int64_t u : others) inserts.push_back(&topic_word(u, static_cast<int>(rng.below(kTopicWords))));
    // Make room: drop common words from the end so the inserts fit within max_length.
    int64_t extra = 0;
    for (const auto* w : inserts) extra += static_cast<int64_t>(w->size()) + 1;
    // (the sentence layout below adds at most one full stop per 6 words, plus one)
    while (!words.empty() &&
           bytes + extra + static_cast<int64_t>(words.size() + inserts.size()) / 6 + 1 > max_len_) {
      bytes -= static_cast<int64_t>(words.back()->size()) + 1;
      words.pop_back();
    }
    for (const auto* w : inserts)
      words.insert(words.begin() + static_cast<ptrdiff_t>(rng.below(words.size() + 1)), w);
    // Sentences of 6-18 words with a full stop; at most max_length bytes by construction.
    std::string doc;
    size_t i = 0;
    while (i < words.size()) {
      const size_t len = 6 + rng.below(13);
      for (size_t j = 0; j < len && i < words.size(); ++j, ++i) {
        if (!doc.empty()) doc += ' ';
        doc += *words[i];
      }
      doc += '.';
    }
    if (static_cast<int64_t>(doc.size()) > max_len_)
      throw std::logic_error(fmt::format("task 'retrieval': a document of {} bytes exceeds max_length {}", doc.size(),
                                         max_len_));
    return doc;
  }

  void open_files() {
    const std::string dir = params_.at("path").get<std::string>();
    if (dir.empty())
      throw ab::UsageError("task 'retrieval': source=lra_files needs path=<directory with new_aan_pairs.*.tsv>, e.g. "
                           "path=lra_release/tsv_data");
    const char* names[3] = {"train", "eval", "test"};
    const auto& keys = ab::preset_sizes::kKeys;
    for (int k = 0; k < 3; ++k) {
      aan_[k] = std::make_shared<ab::lra::AanFile>(dir + "/new_aan_pairs." + names[k] + ".tsv");
      const int64_t avail = aan_[k]->size();
      if (params_.at(keys[k]).is_null()) params_[keys[k]] = avail;
      sizes_[k] = params_.at(keys[k]).get<int64_t>();
      if (sizes_[k] > avail)
        throw ab::UsageError(fmt::format("task 'retrieval': {} = {} but '{}' holds {} pairs; nearest valid value: {}",
                                         keys[k], sizes_[k], aan_[k]->path(), avail, avail));
    }
  }

  bool files_ = false;
  int64_t min_len_ = 0, max_len_ = 0, topics_ = 0;
  std::vector<std::string> common_, rare_;
  std::vector<double> cdf_;
  std::array<std::shared_ptr<ab::lra::AanFile>, 3> aan_;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(Retrieval);

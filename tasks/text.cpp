// Text: byte-level sentiment documents standing in for LRA's IMDb task (Tay et al. 2021, §2.2.2):
// long byte sequences whose label needs evidence gathered over the whole document.
//
// A document is a stream of pseudo-words (a fixed lexicon of 5,000 syllable words of 2-6 letters,
// drawn with Zipf frequencies rank^-1.1, in sentences of 6-18 words with capitals, commas and full
// stops) into which sentiment cue words are inserted at uniformly random places:
//   positive: good nice great superb lovely amazing terrific charming wonderful brilliant
//   negative: poor dull awful boring clumsy tedious horrible dreadful appalling miserable
//   negations: not never hardly
// (each positive cue has a negative partner of the same length, listed in the same place)
// Scoring rule (what the label means; tests/test_tasks.cpp recounts it independently): the words are
// the maximal runs of letters, lower-cased; reading left to right, a negation arms a flip for the
// next `negation_window` words (3: "not good", "not very good", "never a b good"); the first cue
// inside an armed window counts with flipped sign and disarms it; a new negation re-arms it; every
// other cue counts +1 (positive) or -1 (negative). Label = 1 when the sum is positive, 0 when
// negative; documents summing to 0 are redrawn. A cue is negated with probability 0.3 (0-2 filler
// words between negation and cue) and stray negations with no cue in their window are added, so the
// negation word alone says nothing. Classes are balanced exactly: in each pair of consecutive
// indices one is positive, one negative (a random order); a document of the wrong sign has every
// cue swapped with its partner (good <-> poor, great <-> awful, ...), which negates the sum and
// keeps every byte offset.
// Tokens are bytes + 1 (0 = padding; vocabulary 257), like LRA's byte encoder; `text` is the document.
// One Philox stream per document, (seed, data, kTextStream, split).child(index); the lexicon comes
// from a fixed stream, the same for every seed (a fixed "language", like IMDb's English).
#include <algorithm>
#include <array>
#include <cmath>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"
#include "lexicon.hpp"
#include "preset_sizes.hpp"

namespace {

using ab::Json;

constexpr uint64_t kTextStream = 0x5465787453656Eull;  // "TextSen"
constexpr ab::preset_sizes::Sizes kSizes = {{20000, 2000, 2000}, {25000, 2000, 25000}};
constexpr std::array<const char*, 10> kPositive = {"good",    "nice",     "great",    "superb",    "lovely",
                                                   "amazing", "terrific", "charming", "wonderful", "brilliant"};
constexpr std::array<const char*, 10> kNegative = {"poor",    "dull",     "awful",    "boring",    "clumsy",
                                                   "tedious", "horrible", "dreadful", "appalling", "miserable"};
constexpr std::array<const char*, 3> kNegations = {"not", "never", "hardly"};

// Word kinds in a document: filler (index into the lexicon), cue (+-(i+1)), negation.
struct Word {
  enum Kind : uint8_t { filler, positive, negative, negation } kind;
  int32_t id;  // lexicon index, cue index or negation index
};

class Text : public ab::preset_sizes::Task {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    return ab::task_spec(
        "text", "Byte-level sentiment documents (IMDb stand-in): the sign of cue words summed over the document",
        "Tay et al. 2021, Long Range Arena (byte-level text classification); synthetic stand-in",
        ab::preset_sizes::after(
            {
                ab::enum_param(
                    "preset", "small", {"small", "lra"},
                    "defaults of the null parameters: small = documents of 512-1,024 bytes, 20,000 / 2,000 / "
                    "2,000; lra = 1,024-4,096 bytes (LRA's 4K setting), 25,000 / 2,000 / 25,000"),
                null_int_param("min_length", "shortest document in bytes; null = 512 (small) / 1024 (lra)", 16,
                               1 << 24),
                null_int_param("max_length", "longest document in bytes = seq_len; null = 1024 (small) / 4096 (lra)",
                               16, 1 << 24),
                ab::num_param("cues_per_kb", 6.0,
                              "average cue words per 1,000 bytes (each document draws 0.5x-1.5x this)", 0.1, 200.0),
                ab::num_param("negated_fraction", 0.3, "probability that a cue is preceded by a negation", 0.0, 1.0),
                ab::int_param("negation_window", 3, "a negation flips the first cue among the next this many words", 1,
                              16),
            },
            "documents", kSizes, "lra"));
  }

  Text(const Json& p, uint64_t seed) : Task("text", p, seed, "lra") {
    min_len_ = preset_default("min_length", 512, 1024).get<int64_t>();
    max_len_ = preset_default("max_length", 1024, 4096).get<int64_t>();
    resolve_sizes(kSizes);
    cues_per_kb_ = p.at("cues_per_kb").get<double>();
    negated_ = p.at("negated_fraction").get<double>();
    window_ = static_cast<int>(p.at("negation_window").get<int64_t>());
    if (min_len_ > max_len_)
      throw ab::UsageError(fmt::format("task 'text': min_length = {} must be <= max_length = {}", min_len_, max_len_));
    build_lexicon();
  }

  ab::TaskKind kind() const override { return ab::TaskKind::classify; }
  int64_t vocab_size() const override { return 257; }
  int64_t num_classes() const override { return 2; }
  int64_t seq_len() const override { return max_len_; }
  Json stats() const override {
    return {{"positive_cues", kPositive}, {"negative_cues", kNegative}, {"negations", kNegations},
            {"lexicon_size", ab::lexicon::kSize}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    const int k = checked_split(s, index);
    const ab::RngStream base = split_stream(kTextStream, k);
    // Balanced labels: in each pair of indices one document of each class, in random order.
    ab::RngStream order = base.child(static_cast<uint64_t>(index / 2) | (uint64_t{1} << 63));
    const int label = static_cast<int>((order.below(2) + static_cast<uint64_t>(index % 2)) % 2);
    ab::RngStream rng = base.child(static_cast<uint64_t>(index));
    // Punctuation has its own stream, so a re-rendered document keeps its layout.
    const ab::RngStream layout = split_stream(kTextStream, k, 1).child(static_cast<uint64_t>(index));
    for (;;) {
      std::vector<Word> words = draw_words(rng);
      std::string doc = render(words, layout);
      while (static_cast<int64_t>(doc.size()) > max_len_ && words.size() > 1) {  // trim at a word boundary
        words.pop_back();
        doc = render(words, layout);
      }
      const int score = score_of(words);
      if (score == 0) continue;  // ties are redrawn
      if ((score > 0) != (label == 1)) {
        for (auto& w : words)
          if (w.kind == Word::positive) w.kind = Word::negative;
          else if (w.kind == Word::negative) w.kind = Word::positive;
        doc = render(words, layout);  // same lengths, same layout
      }
      ab::Example ex;
      ex.input.resize(doc.size());
      for (size_t i = 0; i < doc.size(); ++i) ex.input[i] = static_cast<int32_t>(static_cast<uint8_t>(doc[i])) + 1;
      ex.target = {label};
      ex.text = std::move(doc);
      return ex;
    }
  }

 private:
  void build_lexicon() {  // the cue words and negations are kept out of the lexicon
    std::set<std::string> seen(kPositive.begin(), kPositive.end());
    seen.insert(kNegative.begin(), kNegative.end());
    seen.insert(kNegations.begin(), kNegations.end());
    lexicon_ = ab::lexicon::common_words(seen);
    cdf_ = ab::lexicon::zipf_cdf();
  }

  int32_t zipf_word(ab::RngStream& rng) const { return ab::lexicon::zipf_rank(cdf_, rng); }

  // The rule in the header: the label's definition.
  int score_of(const std::vector<Word>& words) const {
    int score = 0, armed = 0;
    for (const Word& w : words) {
      if (w.kind == Word::negation) {
        armed = window_;
      } else if (w.kind == Word::positive || w.kind == Word::negative) {
        const int v = w.kind == Word::positive ? 1 : -1;
        score += armed > 0 ? -v : v;
        armed = 0;
      } else if (armed > 0) {
        --armed;
      }
    }
    return score;
  }

  std::string word_text(const Word& w) const {
    switch (w.kind) {
      case Word::filler: return lexicon_[static_cast<size_t>(w.id)];
      case Word::positive: return kPositive[static_cast<size_t>(w.id)];
      case Word::negative: return kNegative[static_cast<size_t>(w.id)];
      case Word::negation: return kNegations[static_cast<size_t>(w.id)];
    }
    return {};
  }

  // Sentences of 6-18 words: a capital first letter, an occasional comma, a full stop.
  std::string render(const std::vector<Word>& words, ab::RngStream rng) const {
    std::string doc;
    size_t i = 0;
    while (i < words.size()) {
      const size_t len = 6 + rng.below(13);
      for (size_t j = 0; j < len && i < words.size(); ++j, ++i) {
        std::string t = word_text(words[i]);
        if (j == 0) t[0] = static_cast<char>(t[0] - 'a' + 'A');
        if (!doc.empty()) doc += ' ';
        doc += t;
        if (j + 1 < len && i + 1 < words.size() && rng.below(9) == 0) doc += ',';
      }
      doc += '.';
    }
    return doc;
  }

  std::vector<Word> draw_words(ab::RngStream& rng) const {
    const int64_t target = min_len_ + static_cast<int64_t>(rng.below(static_cast<uint64_t>(max_len_ - min_len_ + 1)));
    // Filler words up to about the target length.
    std::vector<Word> words;
    int64_t bytes = 0;
    while (bytes < target) {
      const int32_t id = zipf_word(rng);
      words.push_back({Word::filler, id});
      bytes += static_cast<int64_t>(lexicon_[static_cast<size_t>(id)].size()) + 1;
    }
    // Cue events at uniformly random word positions, inserted from the back so positions stay valid.
    const double mean = cues_per_kb_ * static_cast<double>(target) / 1000.0;
    const int64_t cues = std::max<int64_t>(1, std::llround(mean * (0.5 + rng.uniform_double())));
    std::vector<size_t> at(static_cast<size_t>(cues));
    for (auto& a : at) a = static_cast<size_t>(rng.below(words.size() + 1));
    std::sort(at.begin(), at.end());
    for (auto it = at.rbegin(); it != at.rend(); ++it) {
      const Word cue{rng.below(2) ? Word::positive : Word::negative, static_cast<int32_t>(rng.below(10))};
      std::vector<Word> event;
      if (rng.uniform_double() < negated_) {
        event.push_back({Word::negation, static_cast<int32_t>(rng.below(kNegations.size()))});
        const int gap = static_cast<int>(rng.below(static_cast<uint64_t>(std::min(window_, 3))));  // 0..2 fillers
        for (int g = 0; g < gap; ++g) event.push_back({Word::filler, zipf_word(rng)});
      }
      event.push_back(cue);
      words.insert(words.begin() + static_cast<ptrdiff_t>(*it), event.begin(), event.end());
    }
    // Stray negations with no cue in their window, which do not re-arm an earlier negation's window
    // either (so "not" alone carries no label).
    const int64_t strays = std::llround(static_cast<double>(cues) * negated_);
    for (int64_t n = 0; n < strays; ++n) {
      for (int tries = 0; tries < 20; ++tries) {
        const size_t pos = static_cast<size_t>(rng.below(words.size() + 1));
        bool clean = true;
        for (size_t j = pos; j < std::min(words.size(), pos + static_cast<size_t>(window_)) && clean; ++j)
          clean = words[j].kind == Word::filler;
        for (size_t j = pos >= static_cast<size_t>(window_) ? pos - window_ : 0; j < pos && clean; ++j)
          clean = words[j].kind != Word::negation;
        if (!clean) continue;
        words.insert(words.begin() + static_cast<ptrdiff_t>(pos),
                     Word{Word::negation, static_cast<int32_t>(rng.below(kNegations.size()))});
        break;
      }
    }
    return words;
  }

  int64_t min_len_ = 0, max_len_ = 0;
  double cues_per_kb_ = 6, negated_ = 0.3;
  int window_ = 3;
  std::vector<std::string> lexicon_;
  std::vector<double> cdf_;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(Text);

#include "text/byte_chat_tokenizer.h"

#include <algorithm>
#include <array>

#include <absl/strings/str_cat.h>

#include "core/error.h"

namespace dsrl::text {
namespace {

struct Marker {
    std::string_view text;
    int64_t id;
};

// Every marker (BOS and EOS first) by its first byte, longest first: the first one that matches at a position is the
// longest there.
class MarkerTable {
public:
    MarkerTable() {
        add(dsv32::kBos, ByteChatTokenizer::kBos);
        add(dsv32::kEos, ByteChatTokenizer::kEos);
        for (int64_t i = 0; i < ByteChatTokenizer::kNumMarkers; ++i) {
            add(ByteChatTokenizer::kMarkers[i], ByteChatTokenizer::kFirstMarker + i);
        }
        for (std::vector<Marker>& list : by_first_) {
            std::stable_sort(list.begin(), list.end(),
                             [](const Marker& a, const Marker& b) { return a.text.size() > b.text.size(); });
        }
    }
    static const MarkerTable& get() {
        static const MarkerTable table;
        return table;
    }
    // The longest marker that starts at text[pos], nullptr when none does.
    const Marker* at(std::string_view text, size_t pos) const {
        for (const Marker& m : by_first_[static_cast<unsigned char>(text[pos])]) {
            if (text.compare(pos, m.text.size(), m.text) == 0) return &m;
        }
        return nullptr;
    }
    int64_t id_of(std::string_view text) const {
        if (text.empty()) return -1;
        const Marker* m = at(text, 0);
        return m != nullptr && m->text.size() == text.size() ? m->id : -1;
    }

private:
    void add(std::string_view text, int64_t id) {
        by_first_[static_cast<unsigned char>(text[0])].push_back({text, id});
    }
    std::array<std::vector<Marker>, 256> by_first_;
};

}  // namespace

ByteChatTokenizer::ByteChatTokenizer(int64_t vocab_size, bool thinking)
    : vocab_size_(vocab_size),
      format_(make_chat_format("deepseek_v32")),
      options_{.thinking = thinking, .add_bos = true} {
    if (vocab_size < kMinVocab) {
        throw ConfigError(absl::StrCat("model.vocab_size must be at least ", kMinVocab,
                                       " for model.chat_format deepseek_v32 with the byte-level "
                                       "tokenizer (",
                                       kByteOffset, " special tokens + 256 bytes + ", kNumMarkers,
                                       " chat-format markers, text/byte_chat_tokenizer.h), got ", vocab_size));
    }
}

int64_t ByteChatTokenizer::marker_id(std::string_view text) { return MarkerTable::get().id_of(text); }

std::vector<int64_t> ByteChatTokenizer::encode(const std::string& text) const {
    const MarkerTable& table = MarkerTable::get();
    std::vector<int64_t> ids;
    ids.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        if (const Marker* m = table.at(text, pos)) {
            ids.push_back(m->id);
            pos += m->text.size();
        } else {
            ids.push_back(kByteOffset + static_cast<unsigned char>(text[pos]));
            ++pos;
        }
    }
    return ids;
}

std::string ByteChatTokenizer::decode(const std::vector<int64_t>& ids, bool keep_special) const {
    std::string out;
    out.reserve(ids.size());
    for (const int64_t id : ids) {
        if (id < 0 || id >= vocab_size_) {
            throw DataError(absl::StrCat("ByteChatTokenizer::decode: token id ", id, " is outside the vocabulary [0, ",
                                         vocab_size_, ")"));
        }
        if (id >= kByteOffset && id < kFirstMarker) {
            out.push_back(static_cast<char>(id - kByteOffset));
        } else if (id >= kFirstMarker || keep_special) {
            out += token_string(id);
        }
    }
    return out;
}

std::string ByteChatTokenizer::token_string(int64_t id) const {
    if (id < 0 || id >= vocab_size_) {
        throw DataError(absl::StrCat("ByteChatTokenizer::token_string: token id ", id,
                                     " is outside the vocabulary [0, ", vocab_size_, ")"));
    }
    if (id == kBos) return dsv32::kBos;
    if (id == kEos) return dsv32::kEos;
    if (id >= kFirstMarker && id < kMinVocab) return kMarkers[id - kFirstMarker];
    return ByteTokenizer(vocab_size_).token_string(id);
}

bool ByteChatTokenizer::is_special(int64_t id) const { return id >= 0 && id < kByteOffset; }

std::vector<int64_t> ByteChatTokenizer::apply_chat(const std::vector<ChatMessage>& messages, bool) const {
    OrderedJson conv = OrderedJson::array();
    for (const ChatMessage& m : messages) conv.push_back({{"role", m.role}, {"content", m.content}});
    return encode(join_segments(format_->render(conv, options_)));
}

const ChatFormat* ByteChatTokenizer::chat_format(ChatOptions* options) const {
    if (options != nullptr) *options = options_;
    return format_.get();
}

}  // namespace dsrl::text

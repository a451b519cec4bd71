#include "text/hf_tokenizer.h"

#include <algorithm>

#include <absl/strings/str_cat.h>
#include <utf8proc.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"

namespace dsrl::text {
namespace {

using Json = nlohmann::json;

[[noreturn]] void bad(const std::string& file, const std::string& field, const std::string& what) {
    throw ConfigError(absl::StrCat(file, ": ", field, ": ", what));
}

Json read_json(const std::string& path) {
    std::string text;
    try {
        text = fs::read_file(path);
    } catch (const fs::IoError& e) {
        throw ConfigError(absl::StrCat(path, ": cannot read: ", e.reason()));
    }
    try {
        Json j = Json::parse(text);
        if (!j.is_object()) throw ConfigError(absl::StrCat(path, ": expected a JSON object, got ", j.type_name()));
        return j;
    } catch (const Json::exception& e) {
        throw ConfigError(absl::StrCat(path, ": not valid JSON: ", e.what()));
    }
}

// For single_word added tokens: a regex \w character (letters, letter numbers, marks, decimal digits, connector
// punctuation), as tokenizers decides it.
bool is_word_char(char32_t c) {
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
        case UTF8PROC_CATEGORY_LU:
        case UTF8PROC_CATEGORY_LL:
        case UTF8PROC_CATEGORY_LT:
        case UTF8PROC_CATEGORY_LM:
        case UTF8PROC_CATEGORY_LO:
        case UTF8PROC_CATEGORY_NL:
        case UTF8PROC_CATEGORY_MN:
        case UTF8PROC_CATEGORY_MC:
        case UTF8PROC_CATEGORY_ME:
        case UTF8PROC_CATEGORY_ND:
        case UTF8PROC_CATEGORY_PC:
            return true;
        default:
            return false;
    }
}

// The code point ending just before byte `pos` and its start.
char32_t previous_code_point(const std::string& s, size_t pos, size_t* start) {
    size_t b = pos;
    do {
        --b;
    } while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80);
    size_t p = b;
    *start = b;
    return next_code_point(s, p);
}

}  // namespace

std::unique_ptr<HfTokenizer> HfTokenizer::load(const std::string& path) {
    const bool dir = !(fs::exists(path) && !fs::is_dir(path));  // a file given directly, else a directory
    const std::string file = dir ? fs::join(path, "tokenizer.json") : path;
    if (!fs::exists(file))
        throw ConfigError(absl::StrCat(file, ": no such file (expected a Hugging Face tokenizer.json)"));
    const Json j = read_json(file);
    std::unique_ptr<HfTokenizer> t(new HfTokenizer());
    t->file_ = file;
    t->normalizer_ = make_normalizer(j.value("normalizer", Json()), file);
    t->pre_tokenizer_ = make_pre_tokenizer(j.value("pre_tokenizer", Json()), file);
    const auto model = j.find("model");
    if (model == j.end()) bad(file, "model", "missing");
    t->model_ = Bpe::from_json(*model, file);
    t->size_ = t->model_->size();

    if (const auto added = j.find("added_tokens"); added != j.end() && !added->is_null()) {
        if (!added->is_array()) bad(file, "added_tokens", "expected a list");
        for (size_t i = 0; i < added->size(); ++i) {
            const Json& a = (*added)[i];
            const std::string field = absl::StrCat("added_tokens[", i, "]");
            if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || a["id"].get<int64_t>() < 0 ||
                !a.contains("content") || !a["content"].is_string() || a["content"].get<std::string>().empty()) {
                bad(file, field, "expected {\"id\": non-negative integer, \"content\": non-empty string, ...}");
            }
            AddedToken tok;
            tok.id = a["id"].get<int64_t>();
            tok.content = a["content"].get<std::string>();
            auto flag = [&](const char* key, bool dflt) {
                const auto it = a.find(key);
                if (it == a.end() || it->is_null()) return dflt;
                if (!it->is_boolean()) bad(file, absl::StrCat(field, ".", key), "expected true or false");
                return it->get<bool>();
            };
            tok.special = flag("special", false);
            tok.normalized = flag("normalized", !tok.special);
            tok.lstrip = flag("lstrip", false);
            tok.rstrip = flag("rstrip", false);
            tok.single_word = flag("single_word", false);
            t->size_ = std::max(t->size_, tok.id + 1);
            t->added_.push_back(std::move(tok));
        }
    }
    t->added_index_.assign(static_cast<size_t>(t->size_), -1);
    for (size_t i = 0; i < t->added_.size(); ++i) {
        const AddedToken& a = t->added_[i];
        t->added_index_[static_cast<size_t>(a.id)] = static_cast<int32_t>(i);
        Trie& trie = a.normalized && t->normalizer_ ? t->normalized_trie_ : t->raw_trie_;
        int32_t node = 0;
        for (const char c : a.content) {
            const auto [it, inserted] =
                trie.next[node].try_emplace(static_cast<unsigned char>(c), static_cast<int32_t>(trie.next.size()));
            if (inserted) {
                trie.next.emplace_back();
                trie.token.push_back(-1);
            }
            node = it->second;
        }
        trie.token[node] = static_cast<int32_t>(i);
    }

    const Json decoder = j.value("decoder", Json());
    if (!decoder.is_null()) {
        const std::string type = decoder.is_object() ? decoder.value("type", "") : "";
        if (type != "ByteLevel") {
            bad(file, "decoder.type",
                absl::StrCat("decoder \"", type, "\" is not supported (supported: ByteLevel, or none)"));
        }
        t->byte_level_decoder_ = true;
    }
    t->post_ = make_post_processor(j.value("post_processor", Json()), file, t->size_);
    t->post_without_special_ = t->post_ && !t->post_->plain_identity();

    // BOS / EOS / PAD by name from tokenizer_config.json.
    // Beside tokenizer.json (given as a directory or as the file itself).
    const size_t slash = file.find_last_of('/');
    const std::string config_file =
        fs::join(slash == std::string::npos ? "." : file.substr(0, slash), "tokenizer_config.json");
    if (fs::exists(config_file)) {
        const Json c = read_json(config_file);
        auto id_of = [&](const char* key) -> int64_t {
            const auto it = c.find(key);
            if (it == c.end() || it->is_null()) return -1;
            std::string name;
            if (it->is_string()) {
                name = it->get<std::string>();
            } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
                name = (*it)["content"].get<std::string>();
            } else {
                bad(config_file, key, "expected a token string or {\"content\": ...}");
            }
            const int64_t id = t->token_id(name);
            if (id < 0) bad(config_file, key, absl::StrCat("\"", name, "\" is not a token of ", file));
            return id;
        };
        t->bos_ = id_of("bos_token");
        t->eos_ = id_of("eos_token");
        t->pad_ = id_of("pad_token");
    }
    return t;
}

int64_t HfTokenizer::token_id(const std::string& token) const {
    for (const AddedToken& a : added_) {
        if (a.content == token) return a.id;
    }
    return model_->id_of(token);
}

template <class Rest>
void HfTokenizer::split_added(const std::string& text, bool normalized, std::vector<int64_t>& out, Rest&& rest) const {
    const Trie& trie = normalized ? normalized_trie_ : raw_trie_;
    if (trie.next[0].empty()) {
        if (!text.empty()) rest(text);
        return;
    }
    size_t gap = 0;  // start of the text not yet handed out
    size_t i = 0;
    while (i < text.size()) {
        // The longest added token starting at i.
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t k = i; k < text.size(); ++k) {
            const auto it = trie.next[node].find(static_cast<unsigned char>(text[k]));
            if (it == trie.next[node].end()) break;
            node = it->second;
            if (trie.token[node] >= 0) {
                best = trie.token[node];
                best_end = k + 1;
            }
        }
        const AddedToken* tok = best >= 0 ? &added_[static_cast<size_t>(best)] : nullptr;
        if (tok != nullptr && tok->single_word) {
            size_t s = 0;
            const bool left_ok = i == 0 || !is_word_char(previous_code_point(text, i, &s));
            size_t p = best_end;
            const bool right_ok = best_end >= text.size() || !is_word_char(next_code_point(text, p));
            if (!left_ok || !right_ok) tok = nullptr;
        }
        if (tok == nullptr) {
            // No match here; a match refused for single_word is skipped whole, as tokenizers' search moves on.
            i = best >= 0 ? best_end : i + 1;
            continue;
        }
        size_t start = i, end = best_end;
        if (tok->lstrip) {
            while (start > gap) {
                size_t s = 0;
                if (!is_white_space(previous_code_point(text, start, &s))) break;
                start = s;
            }
        }
        if (tok->rstrip) {
            while (end < text.size()) {
                size_t p = end;
                if (!is_white_space(next_code_point(text, p))) break;
                end = p;
            }
        }
        if (start > gap) rest(text.substr(gap, start - gap));
        out.push_back(tok->id);
        gap = i = end;
    }
    if (gap < text.size()) rest(text.substr(gap));
}

void HfTokenizer::encode_plain(const std::string& text, std::vector<int64_t>& out) const {
    if (!pre_tokenizer_) {
        model_->encode(text, out);
        return;
    }
    for (const std::string& piece : pre_tokenizer_->split({text})) model_->encode(piece, out);
}

std::vector<int64_t> HfTokenizer::encode(const std::string& text) const { return encode(text, false); }

std::vector<int64_t> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
    const std::string valid = utf8_lossy(text);
    std::vector<int64_t> out;
    split_added(valid, /*normalized=*/false, out, [&](const std::string& gap) {
        if (!normalizer_) {
            encode_plain(gap, out);
            return;
        }
        split_added(normalizer_->apply(gap), /*normalized=*/true, out,
                    [&](const std::string& rest) { encode_plain(rest, out); });
    });
    if (!post_ || !(add_special_tokens || post_without_special_)) return out;
    std::vector<int64_t> ids;
    PostProcessor::Sequences seqs;
    seqs.push_back(std::move(out));
    for (const std::vector<int64_t>& seq : post_->process(std::move(seqs), add_special_tokens)) {
        ids.insert(ids.end(), seq.begin(), seq.end());
    }
    return ids;
}

std::string HfTokenizer::token_string(int64_t id) const {
    if (id < 0 || id >= size_) {
        throw DataError(absl::StrCat(file_, ": token id ", id, " is outside the vocabulary [0, ", size_, ")"));
    }
    if (const int32_t a = added_index_[static_cast<size_t>(id)]; a >= 0) return added_[static_cast<size_t>(a)].content;
    return id < model_->size() ? model_->token(id) : std::string();
}

bool HfTokenizer::is_special(int64_t id) const {
    if (id < 0 || id >= size_) return false;
    const int32_t a = added_index_[static_cast<size_t>(id)];
    return a >= 0 && added_[static_cast<size_t>(a)].special;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool keep_special) const {
    std::string bytes;
    bool first = true;
    for (const int64_t id : ids) {
        const std::string tok = token_string(id);
        if (!keep_special && is_special(id)) continue;
        if (byte_level_decoder_) {
            if (!ByteAlphabet::get().decode(tok, bytes)) bytes += tok;
        } else {
            if (!first) bytes += ' ';
            bytes += tok;
        }
        first = false;
    }
    return utf8_lossy(bytes);
}

void HfTokenizer::set_chat_format(std::unique_ptr<ChatFormat> format, const ChatOptions& options) {
    chat_ = std::move(format);
    chat_options_ = options;
}

std::vector<int64_t> HfTokenizer::apply_chat(const std::vector<ChatMessage>& messages, bool) const {
    if (!chat_) {
        throw ConfigError(absl::StrCat(file_,
                                       ": no chat format for this tokenizer; set model.chat_format "
                                       "(deepseek_v32) or use a checkpoint whose config.json names one"));
    }
    OrderedJson conv = OrderedJson::array();
    for (const ChatMessage& m : messages) conv.push_back({{"role", m.role}, {"content", m.content}});
    // The format's own generation prompt: a conversation that ends with a user turn ends in <｜Assistant｜>.
    return encode(join_segments(chat_->render(conv, chat_options_)));
}

}  // namespace dsrl::text

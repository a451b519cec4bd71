#include "core/config_binder.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "core/fs.h"

namespace dsrl::config {

// ------------------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------------------

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const bool same = absl::ascii_tolower(a[i - 1]) == absl::ascii_tolower(b[j - 1]);
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (same ? 0 : 1)});
        }
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::optional<std::string> nearest(std::string_view word, const std::vector<std::string>& candidates) {
    std::optional<std::string> best;
    size_t best_distance = std::numeric_limits<size_t>::max();
    for (const std::string& c : candidates) {
        const size_t d = edit_distance(word, c);
        if (d < best_distance) {
            best_distance = d;
            best = c;
        }
    }
    const size_t budget = std::max<size_t>(2, word.size() / 3);
    if (!best || best_distance > budget) return std::nullopt;
    return best;
}

namespace {

std::string format_double(double v) {
    if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
    if (std::isnan(v)) return ".nan";
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    std::string s(buf, end);
    // Keep a float recognisable as such in YAML ("1" would read back as an integer: fine, but be explicit).
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    return s;
}

std::string join_path(const std::string& base, const std::string& key) {
    return base.empty() ? std::string(key) : absl::StrCat(base, ".", key);
}

std::string format_bound(double v) {
    if (std::abs(v) < 1e15 && v == std::floor(v)) return absl::StrCat(static_cast<int64_t>(v));
    return format_double(v);
}

std::string describe_bounds(const Rule& r) {
    if (!r.choices.empty()) return absl::StrJoin(r.choices, " | ");
    if (!r.min && !r.max) return "";
    std::string lo = r.min ? absl::StrCat(r.min_open ? "(" : "[", format_bound(*r.min)) : "(-inf";
    std::string hi = r.max ? absl::StrCat(format_bound(*r.max), r.max_open ? ")" : "]") : "inf)";
    return absl::StrCat(lo, ", ", hi);
}

std::string node_kind(const YAML::Node& n) {
    switch (n.Type()) {
        case YAML::NodeType::Null:
            return "an empty value";
        case YAML::NodeType::Scalar:
            return absl::StrCat("'", n.Scalar(), "'");
        case YAML::NodeType::Sequence:
            return "a list";
        case YAML::NodeType::Map:
            return "a mapping";
        default:
            return "nothing";
    }
}

// ------------------------------------------------------------------------------------------------------------
// Reader
// ------------------------------------------------------------------------------------------------------------

class Reader final : public Binder {
public:
    Reader(YAML::Node root,
           std::string source,
           bool positions,
           std::map<std::string, std::string> overrides,
           std::vector<std::string> known_paths)
        : source_(std::move(source)),
          positions_(positions),
          overrides_(std::move(overrides)),
          known_paths_(std::move(known_paths)) {
        // Node assignment writes through to the shared document in yaml-cpp; reset() rebinds the handle.
        if (!root.IsDefined() || root.IsNull()) root.reset(YAML::Node(YAML::NodeType::Map));
        if (!root.IsMap()) {
            throw ConfigError(
                absl::StrCat(where(root, ""), "the top level must be a mapping of sections, got ", node_kind(root)));
        }
        stack_.push_back({root, "", {}});
    }

    Mode mode() const override { return Mode::kRead; }

    void field(const std::string& key, int64_t& value, const Rule& rule) override {
        YAML::Node n;
        if (!lookup(key, rule, n)) return;
        const std::string path = join_path(top().path, key);
        int64_t parsed = 0;
        if (!n.IsScalar() || !absl::SimpleAtoi(n.Scalar(), &parsed)) {
            type_error(n, path, "an integer");
        }
        check_bounds(n, path, static_cast<double>(parsed), rule);
        value = parsed;
    }

    void field(const std::string& key, double& value, const Rule& rule) override {
        YAML::Node n;
        if (!lookup(key, rule, n)) return;
        const std::string path = join_path(top().path, key);
        double parsed = 0;
        if (!n.IsScalar() || !parse_double(n.Scalar(), parsed)) type_error(n, path, "a finite number");
        check_bounds(n, path, parsed, rule);
        value = parsed;
    }

    void field(const std::string& key, bool& value, const Rule& rule) override {
        YAML::Node n;
        if (!lookup(key, rule, n)) return;
        const std::string path = join_path(top().path, key);
        const std::string t = n.IsScalar() ? absl::AsciiStrToLower(n.Scalar()) : "";
        if (t == "true" || t == "yes" || t == "on") {
            value = true;
        } else if (t == "false" || t == "no" || t == "off") {
            value = false;
        } else {
            type_error(n, path, "a boolean (true or false)");
        }
    }

    void field(const std::string& key, std::string& value, const Rule& rule) override {
        YAML::Node n;
        if (!lookup(key, rule, n)) return;
        const std::string path = join_path(top().path, key);
        if (n.IsNull()) {
            value.clear();
        } else if (!n.IsScalar()) {
            type_error(n, path, "a string");
        } else {
            value = n.Scalar();
        }
        check_choice(n, path, value, rule);
    }

    void field(const std::string& key, std::vector<std::string>& value, const Rule& rule) override {
        read_list(
            key, rule, "a list of strings",
            [&](const YAML::Node& item, const std::string& path) {
                if (!item.IsScalar()) type_error(item, path, "a string");
                check_choice(item, path, item.Scalar(), rule);
                return item.Scalar();
            },
            value);
    }

    void field(const std::string& key, std::vector<double>& value, const Rule& rule) override {
        read_list(
            key, rule, "a list of numbers",
            [&](const YAML::Node& item, const std::string& path) {
                double v = 0;
                if (!item.IsScalar() || !parse_double(item.Scalar(), v)) type_error(item, path, "a finite number");
                check_bounds(item, path, v, rule);
                return v;
            },
            value);
    }

    void field(const std::string& key, std::vector<int64_t>& value, const Rule& rule) override {
        read_list(
            key, rule, "a list of integers",
            [&](const YAML::Node& item, const std::string& path) {
                int64_t v = 0;
                if (!item.IsScalar() || !absl::SimpleAtoi(item.Scalar(), &v)) type_error(item, path, "an integer");
                check_bounds(item, path, static_cast<double>(v), rule);
                return v;
            },
            value);
    }

    void field(const std::string& key, std::map<std::string, std::string>& value, const Rule& rule) override {
        YAML::Node n;
        if (!lookup(key, rule, n)) return;
        const std::string path = join_path(top().path, key);
        if (n.IsNull()) {
            value.clear();
            return;
        }
        if (!n.IsMap()) type_error(n, path, "a mapping of scalars");
        value.clear();
        for (const auto& kv : n) {
            const std::string k = kv.first.Scalar();
            if (!kv.second.IsScalar() && !kv.second.IsNull()) type_error(kv.second, join_path(path, k), "a scalar");
            value[k] = kv.second.IsNull() ? "" : kv.second.Scalar();
        }
    }

    [[noreturn]] void fail(const std::string& key, const std::string& message) override {
        const YAML::Node& node = top().node;
        YAML::Node n = node.IsMap() ? child(node, key) : YAML::Node();
        const std::string path = join_path(top().path, key);
        throw ConfigError(absl::StrCat(where(n.IsDefined() ? n : node, path), path, ": ", message));
    }

    // Checks the root for unknown keys once binding has finished.
    void finish() {
        DSRL_INTERNAL_ASSERT(stack_.size() == 1, "unbalanced config sections");
        check_unknown_keys(stack_.back());
    }

protected:
    bool enter_section(const std::string& key, const std::string& doc) override {
        Frame& parent = top();
        parent.declared.emplace_back(key);
        const std::string path = join_path(parent.path, key);
        const YAML::Node found = child(parent.node, key);
        // Absent: defaults stand, but required keys inside are still checked against an empty mapping.
        const YAML::Node n = found.IsDefined() && !found.IsNull() ? found : YAML::Node(YAML::NodeType::Map);
        if (!n.IsMap()) {
            throw ConfigError(
                absl::StrCat(where(n, path), path, ": expected a section (a mapping of keys), got ", node_kind(n)));
        }
        stack_.push_back({n, path, {}, parent.defaults_only});
        return true;
    }

    void leave_section() override {
        check_unknown_keys(top());
        stack_.pop_back();
    }

    std::optional<size_t> enter_list(const std::string& key, size_t size, const std::string& doc) override {
        Frame& parent = top();
        parent.declared.emplace_back(key);
        const std::string path = join_path(parent.path, key);
        const YAML::Node n = child(parent.node, key);
        if (!n.IsDefined() || n.IsNull()) {
            // Absent: the vector's default elements stand; bind them against empty mappings.
            list_stack_.push_back({YAML::Node(YAML::NodeType::Sequence), path, true});
            return std::nullopt;
        }
        if (!n.IsSequence()) {
            throw ConfigError(absl::StrCat(where(n, path), path, ": expected a list, got ", node_kind(n)));
        }
        list_stack_.push_back({n, path, false});
        return n.size();
    }

    void enter_item(size_t index) override {
        const ListFrame& list = list_stack_.back();
        const std::string path = absl::StrCat(list.path, "[", index, "]");
        YAML::Node item = list.keep_defaults ? YAML::Node(YAML::NodeType::Map) : list.node[index];
        if (!item.IsMap()) {
            throw ConfigError(absl::StrCat(where(item, path), path, ": expected a mapping, got ", node_kind(item)));
        }
        stack_.push_back({item, path, {}, list.keep_defaults});
    }

    void leave_item() override {
        check_unknown_keys(top());
        stack_.pop_back();
    }

    void leave_list() override { list_stack_.pop_back(); }

private:
    struct Frame {
        YAML::Node node;
        std::string path;
        std::vector<std::string> declared;
        bool defaults_only = false;  ///< a default list element not in the document: nothing is required
    };
    struct ListFrame {
        YAML::Node node;
        std::string path;
        bool keep_defaults;
    };

    Frame& top() { return stack_.back(); }

    // Read-only child lookup: const operator[] never inserts into the document.
    static YAML::Node child(const YAML::Node& map, const std::string& key) { return map[std::string(key)]; }

    // A finite number: YAML's .inf / .nan (and inf, nan) are refused — no setting means "infinite" (each has its own
    // off switch), and an infinite lr or temperature would only turn the weights into NaN some steps later.
    static bool parse_double(const std::string& text, double& out) {
        return absl::SimpleAtod(text, &out) && std::isfinite(out);
    }

    // The origin of a node: "file:line:col: " or "--set a.b=c: " for values that came from an override.
    std::string where(const YAML::Node& n, const std::string& path) const {
        for (const auto& [opath, text] : overrides_) {
            if (!path.empty() &&
                (path == opath || path.rfind(opath + ".", 0) == 0 || path.rfind(opath + "[", 0) == 0)) {
                return absl::StrCat("--set ", text, ": ");
            }
        }
        if (positions_ && n.IsDefined() && n.Mark().line >= 0) {
            return absl::StrCat(source_, ":", n.Mark().line + 1, ":", n.Mark().column + 1, ": ");
        }
        return absl::StrCat(source_, ": ");
    }

    bool lookup(const std::string& key, const Rule& rule, YAML::Node& out) {
        Frame& f = top();
        f.declared.emplace_back(key);
        const YAML::Node n = child(f.node, key);
        if (!n.IsDefined()) {
            if (rule.required && !f.defaults_only) {
                const std::string path = join_path(f.path, key);
                throw ConfigError(absl::StrCat(where(f.node, path), "missing required key '", path, "'",
                                               rule.doc.empty() ? "" : absl::StrCat(" (", rule.doc, ")")));
            }
            return false;
        }
        out = n;
        return true;
    }

    [[noreturn]] void type_error(const YAML::Node& n, const std::string& path, const std::string& expected) const {
        throw ConfigError(absl::StrCat(where(n, path), path, ": expected ", expected, ", got ", node_kind(n)));
    }

    void check_bounds(const YAML::Node& n, const std::string& path, double v, const Rule& r) const {
        const bool below = r.min && (r.min_open ? v <= *r.min : v < *r.min);
        const bool above = r.max && (r.max_open ? v >= *r.max : v > *r.max);
        if (below || above) {
            throw ConfigError(absl::StrCat(where(n, path), path, " = ", n.Scalar(), " is out of range; allowed ",
                                           describe_bounds(r)));
        }
    }

    void check_choice(const YAML::Node& n, const std::string& path, const std::string& v, const Rule& r) const {
        if (r.choices.empty() || std::find(r.choices.begin(), r.choices.end(), v) != r.choices.end()) return;
        const auto hint = nearest(v, r.choices);
        throw ConfigError(absl::StrCat(where(n, path), path, " = '", v, "' is not allowed; expected one of ",
                                       absl::StrJoin(r.choices, ", "),
                                       hint ? absl::StrCat(" (did you mean '", *hint, "'?)") : ""));
    }

    template <class T, class Fn>
    void read_list(const std::string& key, const Rule& rule, const char* expected, Fn&& parse, std::vector<T>& out) {
        YAML::Node n;
        if (!lookup(key, rule, n)) return;
        const std::string path = join_path(top().path, key);
        if (n.IsNull()) {
            out.clear();
            return;
        }
        if (!n.IsSequence()) type_error(n, path, expected);
        std::vector<T> values;
        for (size_t i = 0; i < n.size(); ++i) values.push_back(parse(n[i], absl::StrCat(path, "[", i, "]")));
        out = std::move(values);
    }

    void check_unknown_keys(const Frame& f) const {
        for (const auto& kv : f.node) {
            const std::string key = kv.first.Scalar();
            if (std::find(f.declared.begin(), f.declared.end(), key) != f.declared.end()) continue;
            const std::string path = join_path(f.path, key);
            // Order of hints: the same key in another section (e.g. `beta` belongs to `domains[]`), a typo of
            // a key here, a typo of a key elsewhere, else the valid keys here.
            std::optional<std::string> exact_elsewhere;
            std::optional<std::string> near_elsewhere;
            for (const std::string& p : known_paths_) {
                const std::string leaf = p.substr(p.rfind('.') + 1);
                if (leaf == key && !exact_elsewhere) exact_elsewhere = p;
                if (!near_elsewhere && edit_distance(leaf, key) <= std::max<size_t>(1, key.size() / 4)) {
                    near_elsewhere = p;
                }
            }
            std::string hint;
            if (exact_elsewhere) {
                hint = absl::StrCat("; '", key, "' belongs to '", *exact_elsewhere, "'");
            } else if (auto near = nearest(key, f.declared)) {
                hint = absl::StrCat("; did you mean '", join_path(f.path, *near), "'?");
            } else if (near_elsewhere) {
                hint = absl::StrCat("; did you mean '", *near_elsewhere, "'?");
            } else if (!f.declared.empty()) {
                hint = absl::StrCat("; valid keys here: ", absl::StrJoin(f.declared, ", "));
            }
            throw ConfigError(absl::StrCat(where(kv.first, path), "unknown key '", path, "'", hint));
        }
    }

    std::string source_;
    bool positions_;
    std::map<std::string, std::string> overrides_;
    std::vector<std::string> known_paths_;
    std::vector<Frame> stack_;
    std::vector<ListFrame> list_stack_;
};

// ------------------------------------------------------------------------------------------------------------
// Writer (resolved YAML) and schema collector
// ------------------------------------------------------------------------------------------------------------

class Writer final : public Binder {
public:
    Writer() { out_ << YAML::BeginMap; }
    Mode mode() const override { return Mode::kWrite; }

    void field(const std::string& key, int64_t& v, const Rule&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << v;
    }
    void field(const std::string& key, double& v, const Rule&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << format_double(v);
    }
    void field(const std::string& key, bool& v, const Rule&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << (v ? "true" : "false");
    }
    void field(const std::string& key, std::string& v, const Rule&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value;
        if (v.empty())
            out_ << YAML::DoubleQuoted << "";
        else
            out_ << v;
    }
    void field(const std::string& key, std::vector<std::string>& v, const Rule&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << YAML::Flow << v;
    }
    void field(const std::string& key, std::vector<double>& v, const Rule&) override {
        std::vector<std::string> s;
        for (double d : v) s.push_back(format_double(d));
        out_ << YAML::Key << std::string(key) << YAML::Value << YAML::Flow << s;
    }
    void field(const std::string& key, std::vector<int64_t>& v, const Rule&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << YAML::Flow << v;
    }
    void field(const std::string& key, std::map<std::string, std::string>& v, const Rule&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << YAML::Flow << YAML::BeginMap;
        for (const auto& [k, s] : v) out_ << YAML::Key << k << YAML::Value << s;
        out_ << YAML::EndMap;
    }
    [[noreturn]] void fail(const std::string& key, const std::string& message) override {
        DSRL_INTERNAL_ASSERT(false, "Binder::fail called while writing (", key, "): ", message);
        __builtin_unreachable();
    }
    std::string finish() {
        out_ << YAML::EndMap;
        return std::string(out_.c_str()) + "\n";
    }

protected:
    bool enter_section(const std::string& key, const std::string&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << YAML::BeginMap;
        return true;
    }
    void leave_section() override { out_ << YAML::EndMap; }
    std::optional<size_t> enter_list(const std::string& key, size_t size, const std::string&) override {
        out_ << YAML::Key << std::string(key) << YAML::Value << YAML::BeginSeq;
        return size;
    }
    void enter_item(size_t) override { out_ << YAML::BeginMap; }
    void leave_item() override { out_ << YAML::EndMap; }
    void leave_list() override { out_ << YAML::EndSeq; }

private:
    YAML::Emitter out_;
};

class SchemaCollector final : public Binder {
public:
    Mode mode() const override { return Mode::kSchema; }

    void field(const std::string& key, int64_t& v, const Rule& r) override { add(key, "int", absl::StrCat(v), r); }
    void field(const std::string& key, double& v, const Rule& r) override { add(key, "float", format_double(v), r); }
    void field(const std::string& key, bool& v, const Rule& r) override { add(key, "bool", v ? "true" : "false", r); }
    void field(const std::string& key, std::string& v, const Rule& r) override {
        add(key, r.choices.empty() ? "string" : "enum", v.empty() ? "\"\"" : v, r);
    }
    void field(const std::string& key, std::vector<std::string>& v, const Rule& r) override {
        add(key, "list[string]", absl::StrCat("[", absl::StrJoin(v, ", "), "]"), r);
    }
    void field(const std::string& key, std::vector<double>& v, const Rule& r) override {
        std::vector<std::string> s;
        for (double d : v) s.push_back(format_double(d));
        add(key, "list[float]", absl::StrCat("[", absl::StrJoin(s, ", "), "]"), r);
    }
    void field(const std::string& key, std::vector<int64_t>& v, const Rule& r) override {
        add(key, "list[int]", absl::StrCat("[", absl::StrJoin(v, ", "), "]"), r);
    }
    void field(const std::string& key, std::map<std::string, std::string>& v, const Rule& r) override {
        std::vector<std::string> s;
        for (const auto& [k, val] : v) s.push_back(absl::StrCat(k, ": ", val));
        add(key, "map[string]", absl::StrCat("{", absl::StrJoin(s, ", "), "}"), r);
    }
    [[noreturn]] void fail(const std::string& key, const std::string& message) override {
        DSRL_INTERNAL_ASSERT(false, "Binder::fail called while documenting (", key, "): ", message);
        __builtin_unreachable();
    }
    std::vector<SchemaRow> finish() { return std::move(rows_); }

protected:
    bool enter_section(const std::string& key, const std::string& doc) override {
        rows_.push_back({join_path(prefix(), key), "section", "", "", std::string(doc), false});
        stack_.push_back(join_path(prefix(), key));
        return true;
    }
    void leave_section() override { stack_.pop_back(); }
    std::optional<size_t> enter_list(const std::string& key, size_t, const std::string& doc) override {
        rows_.push_back({join_path(prefix(), key), "list", "[]", "", std::string(doc), false});
        stack_.push_back(absl::StrCat(join_path(prefix(), key), "[]"));
        return 1;
    }
    void enter_item(size_t) override {}
    void leave_item() override {}
    void leave_list() override { stack_.pop_back(); }

private:
    std::string prefix() const { return stack_.empty() ? "" : stack_.back(); }
    void add(const std::string& key, const std::string& type, const std::string& def, const Rule& r) {
        rows_.push_back(
            {join_path(prefix(), key), type, r.required ? "(required)" : def, describe_bounds(r), r.doc, r.required});
    }
    std::vector<std::string> stack_;
    std::vector<SchemaRow> rows_;
};

}  // namespace

void Binder::field(const std::string& key, int& value, const Rule& rule) {
    Rule r = rule;
    if (!r.min) r.min = static_cast<double>(std::numeric_limits<int>::min());
    if (!r.max) r.max = static_cast<double>(std::numeric_limits<int>::max());
    int64_t wide = value;
    field(key, wide, r);
    value = static_cast<int>(wide);
}

std::unique_ptr<Binder> make_yaml_writer() { return std::make_unique<Writer>(); }
std::string finish_yaml_writer(Binder& writer) { return static_cast<Writer&>(writer).finish(); }
std::unique_ptr<Binder> make_schema_collector() { return std::make_unique<SchemaCollector>(); }
std::vector<SchemaRow> finish_schema_collector(Binder& collector) {
    return static_cast<SchemaCollector&>(collector).finish();
}

std::string schema_markdown(const std::vector<SchemaRow>& rows) {
    auto cell = [](std::string s) {
        std::string out;
        for (char c : s) {
            if (c == '|')
                out += "\\|";
            else if (c == '\n')
                out += ' ';
            else
                out += c;
        }
        return out;
    };
    std::string md = "| key | type | default | allowed | description |\n|---|---|---|---|---|\n";
    for (const SchemaRow& r : rows) {
        if (r.type == "section" || r.type == "list") {
            absl::StrAppend(&md, "| **`", r.path, "`** | ", r.type, " | | | ", cell(r.doc), " |\n");
        } else {
            absl::StrAppend(&md, "| `", r.path, "` | ", r.type, " | `", cell(r.default_value), "` | ", cell(r.allowed),
                            " | ", cell(r.doc), " |\n");
        }
    }
    return md;
}

// ------------------------------------------------------------------------------------------------------------
// Document
// ------------------------------------------------------------------------------------------------------------

struct Document::Impl {
    YAML::Node root;
    std::map<std::string, std::string> overrides;  // normalized path -> original "a.b=c" text
};

namespace {

// yaml-cpp keeps both entries of a key given twice in one mapping and its lookups return the first: the second
// would be ignored without a word. Refused, naming both places.
void reject_duplicate_keys(const YAML::Node& node, const std::string& path, const std::string& source) {
    if (node.IsMap()) {
        std::map<std::string, YAML::Mark> seen;
        for (const auto& kv : node) {
            const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
            const std::string at = join_path(path, key);
            if (!key.empty()) {
                const auto [it, inserted] = seen.emplace(key, kv.first.Mark());
                if (!inserted) {
                    throw ConfigError(absl::StrCat(
                        source, ":", kv.first.Mark().line + 1, ":", kv.first.Mark().column + 1, ": duplicate key '", at,
                        "' (first given at line ", it->second.line + 1, "); a key may appear once in a mapping"));
                }
            }
            reject_duplicate_keys(kv.second, at, source);
        }
    } else if (node.IsSequence()) {
        for (size_t i = 0; i < node.size(); ++i) {
            reject_duplicate_keys(node[i], absl::StrCat(path, "[", i, "]"), source);
        }
    }
}

// Where the second YAML document of a text begins (its events are parsed and dropped), or nullopt. Not LoadAll: on
// some malformed inputs yaml-cpp's parser yields empty documents without end (found by the job_config fuzzer), and
// YAML::Load reads the first document only, dropping the rest of the text without a word.
std::optional<YAML::Mark> second_document(const std::string& text) {
    struct Starts final : YAML::EventHandler {
        std::vector<YAML::Mark> marks;
        void OnDocumentStart(const YAML::Mark& m) override { marks.push_back(m); }
        void OnDocumentEnd() override {}
        void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
        void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
        void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
        void OnSequenceStart(const YAML::Mark&,
                             const std::string&,
                             YAML::anchor_t,
                             YAML::EmitterStyle::value) override {}
        void OnSequenceEnd() override {}
        void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
        void OnMapEnd() override {}
    };
    std::istringstream in(text);
    YAML::Parser parser(in);
    Starts starts;
    for (int i = 0; i < 2 && parser.HandleNextDocument(starts); ++i) {
    }
    if (starts.marks.size() < 2) return std::nullopt;
    return starts.marks[1];
}

}  // namespace

Document Document::from_string(const std::string& text, const std::string& source) {
    Document doc;
    doc.impl_ = std::make_shared<Impl>();
    doc.source_ = source;
    std::optional<YAML::Mark> second;
    try {
        doc.impl_->root = YAML::Load(text);
        second = second_document(text);
    } catch (const YAML::Exception& e) {
        throw ConfigError(
            absl::StrCat(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg));
    }
    if (second) {
        throw ConfigError(absl::StrCat(source, ":", second->line + 1,
                                       ": a second YAML document begins here (after a "
                                       "--- separator, or where the text stops being part of the first); a job "
                                       "configuration is one document"));
    }
    reject_duplicate_keys(doc.impl_->root, "", source);
    return doc;
}

Document Document::from_file(const std::string& path) {
    std::string text;
    try {
        text = fs::read_file(path);
    } catch (const fs::IoError& e) {
        throw ConfigError(absl::StrCat("config file '", path, "' cannot be read: ", e.reason()));
    }
    Document doc = from_string(text, path);
    if (doc.impl_->root.IsNull()) {
        throw ConfigError(absl::StrCat("config file '", path,
                                       "' is empty (no settings); omit --config to run the embedded demo job"));
    }
    return doc;
}

void Document::apply_override(const std::string& assignment) {
    const size_t eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) {
        throw ConfigError(absl::StrCat("--set ", assignment, ": expected key.path=value (e.g. --set grpo.beta=0.01)"));
    }
    const std::string path_text = assignment.substr(0, eq);
    const std::string value_text = assignment.substr(eq + 1);
    std::vector<std::string> parts;
    for (absl::string_view part : absl::StrSplit(path_text, '.')) {
        // domains[0].weight is accepted as domains.0.weight
        std::string p(part);
        const size_t bracket = p.find('[');
        if (bracket != std::string::npos && p.back() == ']') {
            parts.push_back(p.substr(0, bracket));
            parts.push_back(p.substr(bracket + 1, p.size() - bracket - 2));
        } else {
            parts.push_back(p);
        }
    }
    for (const std::string& p : parts) {
        if (p.empty()) throw ConfigError(absl::StrCat("--set ", assignment, ": empty component in key path"));
    }
    YAML::Node value;
    try {
        value = value_text.empty() ? YAML::Node(std::string()) : YAML::Load(value_text);
    } catch (const YAML::Exception& e) {
        throw ConfigError(absl::StrCat("--set ", assignment, ": the value is not valid YAML: ", e.msg));
    }
    reject_duplicate_keys(value, path_text, absl::StrCat("--set ", assignment));
    if (!impl_->root.IsDefined() || impl_->root.IsNull()) impl_->root = YAML::Node(YAML::NodeType::Map);
    YAML::Node cur = impl_->root;
    std::string normalized;
    for (size_t i = 0; i < parts.size(); ++i) {
        const std::string& p = parts[i];
        const bool last = i + 1 == parts.size();
        YAML::Node next;
        if (cur.IsSequence()) {
            size_t index = 0;
            if (!absl::SimpleAtoi(p, &index) || index >= cur.size()) {
                throw ConfigError(absl::StrCat("--set ", assignment, ": '", normalized, "' is a list of ", cur.size(),
                                               " items; '", p, "' is not a valid index"));
            }
            normalized = absl::StrCat(normalized, "[", index, "]");
            if (last) {
                cur[index] = value;
                break;
            }
            next.reset(cur[index]);
        } else {
            if (!cur.IsMap() && !cur.IsNull()) {
                throw ConfigError(absl::StrCat("--set ", assignment, ": '", normalized, "' is a value, not a section"));
            }
            normalized = join_path(normalized, p);
            if (last) {
                cur[p] = value;
                break;
            }
            if (!cur[p].IsDefined() || cur[p].IsNull()) cur[p] = YAML::Node(YAML::NodeType::Map);
            next.reset(cur[p]);
        }
        cur.reset(next);
    }
    impl_->overrides[normalized] = assignment;
}

std::unique_ptr<Binder> Document::make_reader(const std::vector<std::string>& known_paths) const {
    return std::make_unique<Reader>(impl_->root, source_, positions_, impl_->overrides, known_paths);
}

void Document::finish_reader(Binder& reader) const { static_cast<Reader&>(reader).finish(); }

}  // namespace dsrl::config

// Binding between YAML and typed config structs (SPEC §7; issue "Foundation" item 5).
// Each config struct has one free function that lists its fields once:
//
//   void bind(config::Binder& b, GrpoConfig& c) {
//       b.field("eps_low", c.eps_low, {.doc = "lower clip range", .min = 0.0, .max = 1.0});
//       b.choice("loss_agg", c.loss_agg, {{"seq_mean", LossAgg::kSeqMean}, {"token_mean", LossAgg::kTokenMean}},
//                {.doc = "loss aggregation"});
//   }
//
// The same function then reads YAML (with precise errors), writes the resolved YAML (--print-config) and
// documents the schema (--print-schema, docs/configuration.md). Errors are dsrl::ConfigError, one line, naming
// file:line:column (or the --set that introduced the value), the full key path, the value and what is
// allowed; an unknown key suggests the nearest valid key.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"

namespace dsrl::config {

/// Documentation and constraints of one field. Bounds are inclusive unless the *_open flag is set.
struct Rule {
    std::string doc;
    bool required = false;
    std::optional<double> min;
    std::optional<double> max;
    bool min_open = false;
    bool max_open = false;
    std::vector<std::string> choices;  ///< for string fields: the allowed values
};

class Binder {
public:
    enum class Mode { kRead, kWrite, kSchema };
    virtual ~Binder() = default;
    virtual Mode mode() const = 0;

    virtual void field(const std::string& key, int64_t& value, const Rule& rule) = 0;
    virtual void field(const std::string& key, double& value, const Rule& rule) = 0;
    virtual void field(const std::string& key, bool& value, const Rule& rule) = 0;
    virtual void field(const std::string& key, std::string& value, const Rule& rule) = 0;
    virtual void field(const std::string& key, std::vector<std::string>& value, const Rule& rule) = 0;
    virtual void field(const std::string& key, std::vector<double>& value, const Rule& rule) = 0;
    virtual void field(const std::string& key, std::vector<int64_t>& value, const Rule& rule) = 0;
    virtual void field(const std::string& key, std::map<std::string, std::string>& value, const Rule& rule) = 0;
    /// 32-bit integers are read as 64-bit and range-checked against int32.
    void field(const std::string& key, int& value, const Rule& rule);

    /// An enum bound by name. Reading an unknown name is a ConfigError listing the names.
    template <class E>
    void choice(const std::string& key, E& value, const std::vector<std::pair<const char*, E>>& names, Rule rule) {
        std::string text;
        for (const auto& [name, v] : names) {
            rule.choices.emplace_back(name);
            if (v == value) text = name;
        }
        field(key, text, rule);
        if (mode() == Mode::kRead) {
            for (const auto& [name, v] : names) {
                if (text == name) value = v;
            }
        }
    }

    /// A nested struct S with a `bind(Binder&, S&)` overload.
    template <class S>
    void section(const std::string& key, S& value, const std::string& doc) {
        if (enter_section(key, doc)) {
            bind(*this, value);
            leave_section();
        }
    }

    /// A list of structs. The schema documents one default element as `key[].field`.
    template <class S>
    void list(const std::string& key, std::vector<S>& value, const std::string& doc) {
        // nullopt: the list is absent from the document and the current elements stand.
        const std::optional<size_t> provided = enter_list(key, value.size(), doc);
        const size_t n = provided.value_or(value.size());
        if (mode() == Mode::kSchema) {
            S element{};
            enter_item(0);
            bind(*this, element);
            leave_item();
        } else {
            if (mode() == Mode::kRead && provided) value.assign(n, S{});
            for (size_t i = 0; i < n; ++i) {
                enter_item(i);
                bind(*this, value[i]);
                leave_item();
            }
        }
        leave_list();
    }

    /// True while reading YAML into the structs (cross-field checks run then, not while writing or documenting).
    bool reading() const { return mode() == Mode::kRead; }

    /// Reports a cross-field problem found after reading (e.g. topk_group > n_group) at `key` (a path
    /// relative to the current section): throws ConfigError with the location of that key.
    [[noreturn]] virtual void fail(const std::string& key, const std::string& message) = 0;

protected:
    virtual bool enter_section(const std::string& key, const std::string& doc) = 0;
    virtual void leave_section() = 0;
    virtual std::optional<size_t> enter_list(const std::string& key, size_t size, const std::string& doc) = 0;
    virtual void enter_item(size_t index) = 0;
    virtual void leave_item() = 0;
    virtual void leave_list() = 0;
};

/// One row of the schema: full key path, type, default value (as YAML), constraints and doc.
struct SchemaRow {
    std::string path;
    std::string type;
    std::string default_value;
    std::string allowed;
    std::string doc;
    bool required = false;
};

/// A parsed YAML document together with its origin and the --set overrides applied to it.
class Document {
public:
    /// Parses `path`; a missing or unreadable file or a YAML syntax error is a ConfigError naming the file
    /// (and line for syntax errors).
    static Document from_file(const std::string& path);
    /// Parses YAML text; `source` names it in errors.
    static Document from_string(const std::string& text, const std::string& source);

    /// Applies `a.b.c=value` (value parsed as YAML: `[1, 2]`, `{k: v}`, numbers, strings). Numeric path
    /// components index lists (`domains.0.weight=2`). Malformed overrides are ConfigErrors naming them.
    void apply_override(const std::string& assignment);

    /// Reads the document into `value` (with `bind(Binder&, S&)`), throwing ConfigError on the first
    /// problem. `known_paths` (all schema paths) lets an unknown key suggest a key in another section.
    template <class S>
    void read_into(S& value, const std::vector<std::string>& known_paths = {}) const {
        auto reader = make_reader(known_paths);
        bind(*reader, value);
        finish_reader(*reader);
    }

    const std::string& source() const { return source_; }

    /// Errors stop citing line numbers (for documents generated from a resolved config).
    void forget_positions() { positions_ = false; }

    struct Impl;

private:
    std::unique_ptr<Binder> make_reader(const std::vector<std::string>& known_paths) const;
    void finish_reader(Binder& reader) const;
    std::shared_ptr<Impl> impl_;
    std::string source_;
    bool positions_ = true;
};

/// Writes `value` as YAML (every field, resolved).
template <class S>
std::string to_yaml(S& value);
/// The schema rows of a default-constructed S.
template <class S>
std::vector<SchemaRow> schema_of();

/// Non-template back ends of to_yaml / schema_of.
std::unique_ptr<Binder> make_yaml_writer();
std::string finish_yaml_writer(Binder& writer);
std::unique_ptr<Binder> make_schema_collector();
std::vector<SchemaRow> finish_schema_collector(Binder& collector);

/// A markdown table of the schema (docs/configuration.md is generated from it).
std::string schema_markdown(const std::vector<SchemaRow>& rows);
/// Levenshtein distance, case-insensitive (used for "did you mean" hints).
size_t edit_distance(std::string_view a, std::string_view b);
/// The candidate nearest to `word`, if it is near enough to be a plausible typo.
std::optional<std::string> nearest(std::string_view word, const std::vector<std::string>& candidates);

template <class S>
std::string to_yaml(S& value) {
    auto writer = make_yaml_writer();
    bind(*writer, value);
    return finish_yaml_writer(*writer);
}

template <class S>
std::vector<SchemaRow> schema_of() {
    S value{};
    auto collector = make_schema_collector();
    bind(*collector, value);
    return finish_schema_collector(*collector);
}

}  // namespace dsrl::config

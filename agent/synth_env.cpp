#include "agent/synth_env.h"

#include "agent/question_env.h"
#include "core/fs.h"
#include "core/rng.h"

#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_join.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <set>

namespace dsrl::agent {
namespace synth {
namespace {

// ---- Deterministic randomness -------------------------------------------------------------------------------

// SplitMix64: a counter advanced by the golden gamma, finalized by rng::mix64. Only integer operations, so every
// platform draws the same numbers (std::uniform_int_distribution is implementation-defined).
class SplitMix {
public:
    explicit SplitMix(uint64_t seed) : state_(seed) {}
    uint64_t next() { return rng::mix64(state_ += 0x9E3779B97F4A7C15ull); }
    /// In [0, n), n > 0 (the modulo bias is negligible for our small n).
    int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
    /// In [lo, hi].
    int64_t between(int64_t lo, int64_t hi) { return lo + below(hi - lo + 1); }
    template <typename T>
    const T& pick(const std::vector<T>& v) {
        return v[static_cast<size_t>(below(static_cast<int64_t>(v.size())))];
    }

private:
    uint64_t state_;
};

// ---- Names --------------------------------------------------------------------------------------------------

const std::vector<std::string> kCityStarts = {"Vel", "Bren", "Cas", "Mor", "Tal", "Ost", "Lum", "Kar",
                                              "Sel", "Dun",  "Ari", "Fen", "Gal", "Hav", "Ith", "Jor"};
const std::vector<std::string> kCityEnds = {"oria", "holm", "taro", "wick", "ena",  "burg",
                                            "mar",  "ston", "ara",  "dell", "ford", "usa"};
const std::vector<std::string> kDistricts = {"Old Town", "Riverside",     "Harbor",          "University",
                                             "Station",  "Market Square", "Garden District", "Hillside"};
const std::vector<std::string> kCuisines = {"italian", "japanese", "mexican", "indian",  "french",
                                            "thai",    "local",    "seafood", "chinese", "vegetarian"};
const std::vector<std::string> kCategories = {"museum", "park",    "landmark", "gallery",
                                              "market", "theatre", "zoo",      "tour"};
const std::vector<std::string> kHotelFirst = {"Grand",  "Royal",   "Harbor", "Park",  "Garden", "Central",
                                              "Silver", "Lantern", "Maple",  "Crown", "Summit", "Willow"};
const std::vector<std::string> kHotelSecond = {"Hotel", "Inn", "Suites", "Lodge", "House", "Resort"};
const std::vector<std::string> kRestaurantFirst = {"Golden", "Blue",  "Little", "Corner",  "Lucky",  "Green",
                                                   "Red",    "Happy", "Olive",  "Saffron", "Copper", "Velvet"};
const std::vector<std::string> kRestaurantSecond = {"Bistro", "Kitchen", "Table", "Grill",
                                                    "Spoon",  "Cafe",    "Plate", "Oven"};
const std::vector<std::string> kAttractionFirst = {"Northern", "Royal", "Old",   "City",  "River", "Sunset",
                                                   "Hidden",   "Great", "Stone", "Glass", "Amber", "Harbor"};

std::string category_noun(const std::string& category) {
    if (category == "landmark") return "Tower";
    if (category == "tour") return "Boat Tour";
    std::string noun = category;
    noun[0] = absl::ascii_toupper(static_cast<unsigned char>(noun[0]));
    return noun;
}

// A first and a second part, drawn in this order (the operands of + are evaluated in an unspecified order).
std::string pair_name(SplitMix& rng,
                      const std::vector<std::string>& first,
                      const std::vector<std::string>& second,
                      const char* sep) {
    const std::string a = rng.pick(first);
    return absl::StrCat(a, sep, rng.pick(second));
}

// k distinct entries of `pool`, in drawn order (a partial Fisher-Yates shuffle).
std::vector<std::string> draw_distinct(SplitMix& rng, std::vector<std::string> pool, size_t k) {
    k = std::min(k, pool.size());
    for (size_t i = 0; i < k; ++i) {
        const size_t j = i + static_cast<size_t>(rng.below(static_cast<int64_t>(pool.size() - i)));
        std::swap(pool[i], pool[j]);
    }
    pool.resize(k);
    return pool;
}

// A rating in tenths, 2.5-5.0, higher for pricier items (price in [lo, hi]).
double draw_rating(SplitMix& rng, int64_t price, int64_t lo, int64_t hi) {
    const int64_t tenths =
        std::min<int64_t>(50, 25 + rng.below(16) + (price - lo) * 10 / std::max<int64_t>(hi - lo, 1));
    return static_cast<double>(tenths) / 10.0;
}

const char* kind_name(ItemKind k) {
    switch (k) {
        case ItemKind::kHotel:
            return "hotel";
        case ItemKind::kRestaurant:
            return "restaurant";
        case ItemKind::kAttraction:
            return "attraction";
    }
    return "?";
}

const char* tag_key(ItemKind k) { return k == ItemKind::kRestaurant ? "cuisine" : "category"; }

std::string lower(std::string_view s) { return absl::AsciiStrToLower(std::string(s)); }

std::string rating_text(double r) { return absl::StrFormat("%.1f", r); }

// ---- JSON reading with errors naming the key ---------------------------------------------------------------

[[noreturn]] void bad(const std::string& where, const std::string& what) { throw DataError(absl::StrCat(where, what)); }

const Json& field(const Json& j, const char* key, const std::string& where) {
    if (!j.is_object()) bad(where, absl::StrCat("expected an object, got ", j.type_name()));
    const auto it = j.find(key);
    if (it == j.end()) bad(where, absl::StrCat("missing \"", key, "\""));
    return *it;
}

std::string string_field(const Json& j, const char* key, const std::string& where) {
    const Json& v = field(j, key, where);
    if (!v.is_string()) bad(where, absl::StrCat("\"", key, "\" must be a string, got ", v.dump()));
    return v.get<std::string>();
}

int64_t int_field(const Json& j, const char* key, const std::string& where, int64_t min) {
    const Json& v = field(j, key, where);
    if (!v.is_number_integer() || v.get<int64_t>() < min) {
        bad(where, absl::StrCat("\"", key, "\" must be an integer >= ", min, ", got ", v.dump()));
    }
    return v.get<int64_t>();
}

double rating_field(const Json& j, const char* key, const std::string& where) {
    const Json& v = field(j, key, where);
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 5) {
        bad(where, absl::StrCat("\"", key, "\" must be a number in [0, 5], got ", v.dump()));
    }
    return v.get<double>();
}

// ---- Constraints as the solver and verifier use them -------------------------------------------------------

constexpr double kRatingSlack = 1e-9;  // ratings are tenths; a hand-written 4.3 may parse a hair off

struct Limits {
    double min_hotel = 0, min_restaurant = 0, min_attraction = 0;
    int64_t max_meal = std::numeric_limits<int64_t>::max();
    int64_t budget = 0;
    std::vector<std::string> districts;                    // the hotel is in each (two different: no plan)
    std::map<int64_t, std::vector<std::string>> cuisines;  // day (1-based) -> the cuisines lunch must be
    std::vector<std::string> categories;                   // each covered by some attraction
    bool distinct_cuisines = false;
};

Limits limits_of(const TripConstraints& c) {
    Limits l;
    l.budget = c.budget;
    for (const Rule& r : c.rules) {
        if (r.kind == "min_hotel_rating") l.min_hotel = std::max(l.min_hotel, r.rating);
        if (r.kind == "min_restaurant_rating") l.min_restaurant = std::max(l.min_restaurant, r.rating);
        if (r.kind == "min_attraction_rating") l.min_attraction = std::max(l.min_attraction, r.rating);
        if (r.kind == "max_meal_price") l.max_meal = std::min(l.max_meal, r.amount);
        if (r.kind == "max_total_cost") l.budget = std::min(l.budget, r.amount);
        if (r.kind == "hotel_district") l.districts.push_back(r.name);
        if (r.kind == "cuisine_on_day") l.cuisines[r.day].push_back(r.name);
        if (r.kind == "attraction_category") l.categories.push_back(r.name);
        if (r.kind == "distinct_cuisines") l.distinct_cuisines = true;
    }
    return l;
}

bool rated(const Item& it, double min) { return it.rating + kRatingSlack >= min; }

bool hotel_ok(const Item& h, const Limits& l) {
    return rated(h, l.min_hotel) &&
           std::all_of(l.districts.begin(), l.districts.end(), [&](const std::string& d) { return h.district == d; });
}
bool restaurant_ok(const Item& r, const Limits& l) { return rated(r, l.min_restaurant) && r.price <= l.max_meal; }
bool attraction_ok(const Item& a, const Limits& l) { return rated(a, l.min_attraction); }

// Items passing `ok`, cheapest first, ties in database order.
template <typename Ok>
std::vector<const Item*> cheapest_first(const std::vector<Item>& items, Ok ok) {
    std::vector<const Item*> out;
    for (const Item& it : items) {
        if (ok(it)) out.push_back(&it);
    }
    std::stable_sort(out.begin(), out.end(), [](const Item* a, const Item* b) { return a->price < b->price; });
    return out;
}

// The cheapest `days` distinct attractions covering every required category, or {} when there are none. Exact by an
// exchange argument: a cheapest set can hold the cheapest attraction of each required category (swapping one in
// for a dearer one of the same category keeps the cover and lowers no cost), and the remaining slots then take the
// cheapest of the rest. `cand` is cheapest first; the result keeps that order.
std::vector<const Item*> cheapest_attractions(const std::vector<const Item*>& cand,
                                              const std::vector<std::string>& categories,
                                              size_t days) {
    std::vector<bool> used(cand.size(), false);
    size_t count = 0;
    for (const std::string& category : std::set<std::string>(categories.begin(), categories.end())) {
        const auto it = std::find_if(cand.begin(), cand.end(), [&](const Item* a) { return a->tag == category; });
        if (it == cand.end()) return {};
        used[static_cast<size_t>(it - cand.begin())] = true;
        ++count;
    }
    if (count > days) return {};
    for (size_t i = 0; i < cand.size() && count < days; ++i) {
        if (!used[i]) {
            used[i] = true;
            ++count;
        }
    }
    if (count < days) return {};
    std::vector<const Item*> out;
    for (size_t i = 0; i < cand.size(); ++i) {
        if (used[i]) out.push_back(cand[i]);
    }
    return out;
}

// The cheapest lunch restaurants, one a day, all different (and of different cuisines when asked), each day's
// candidates filtered by its cuisine rules: backtracking with branch and bound. Days with a cuisine rule go first;
// the days without one share one candidate list and are interchangeable, so their restaurants are taken in
// increasing list order (no permutation is searched twice) and bounded by the next cheapest of that list.
class RestaurantSearch {
public:
    RestaurantSearch(std::vector<std::vector<const Item*>> typed,
                     std::vector<size_t> typed_days,
                     std::vector<const Item*> free,
                     std::vector<size_t> free_days,
                     bool distinct_cuisines)
        : typed_(std::move(typed)), free_(std::move(free)), distinct_cuisines_(distinct_cuisines) {
        days_ = std::move(typed_days);
        days_.insert(days_.end(), free_days.begin(), free_days.end());
        num_free_ = free_days.size();
        typed_bound_.assign(typed_.size() + 1, 0);
        for (size_t k = typed_.size(); k-- > 0;) typed_bound_[k] = typed_bound_[k + 1] + typed_[k].front()->price;
        free_prefix_.assign(free_.size() + 1, 0);
        for (size_t i = 0; i < free_.size(); ++i) free_prefix_[i + 1] = free_prefix_[i] + free_[i]->price;
    }

    /// The restaurant of each day (indexed by day), or {} when no assignment exists; `cost` receives the total.
    std::vector<const Item*> run(int64_t* cost) {
        // Enough different restaurants (cuisines) for every day, else no assignment (say more days than cuisines).
        std::set<std::string> units;
        for (const auto& day : typed_) {
            for (const Item* r : day) units.insert(distinct_cuisines_ ? r->tag : r->id);
        }
        for (const Item* r : free_) units.insert(distinct_cuisines_ ? r->tag : r->id);
        if (units.size() < days_.size()) return {};
        search(0, 0, 0);
        if (best_.empty()) return {};
        std::vector<const Item*> by_day(days_.size());
        for (size_t k = 0; k < days_.size(); ++k) by_day[days_[k]] = best_[k];
        *cost = best_cost_;
        return by_day;
    }

private:
    bool taken(const Item* r) const {
        return std::any_of(chosen_.begin(), chosen_.end(),
                           [&](const Item* c) { return c == r || (distinct_cuisines_ && c->tag == r->tag); });
    }

    // A lower bound of the days from position k on, the free ones drawn from free_[free_from..].
    int64_t bound(size_t k, size_t free_from) const {
        const size_t free_left = k <= typed_.size() ? num_free_ : days_.size() - k;
        if (free_from + free_left > free_.size()) return std::numeric_limits<int64_t>::max() / 2;
        return typed_bound_[std::min(k, typed_.size())] + free_prefix_[free_from + free_left] - free_prefix_[free_from];
    }

    void search(size_t k, int64_t cost, size_t free_from) {
        if (cost + bound(k, free_from) >= best_cost_) return;
        if (k == days_.size()) {
            best_cost_ = cost;
            best_ = chosen_;
            return;
        }
        const bool typed = k < typed_.size();
        const std::vector<const Item*>& cand = typed ? typed_[k] : free_;
        for (size_t i = typed ? 0 : free_from; i < cand.size(); ++i) {
            const Item* r = cand[i];
            const size_t next_free = typed ? free_from : i + 1;
            // Cheapest first: a later candidate costs more and (free days) leaves a dearer window for the rest.
            if (cost + r->price + bound(k + 1, next_free) >= best_cost_) break;
            if (taken(r)) continue;
            chosen_.push_back(r);
            search(k + 1, cost + r->price, next_free);
            chosen_.pop_back();
        }
    }

    std::vector<std::vector<const Item*>> typed_;  // per typed day, cheapest first
    std::vector<const Item*> free_;                // the free days' candidates, cheapest first
    bool distinct_cuisines_;
    std::vector<size_t> days_;  // the day (0-based) of each search position: typed days, then free days
    size_t num_free_ = 0;
    std::vector<int64_t> typed_bound_;  // [k] = sum of the cheapest candidate of typed positions k..
    std::vector<int64_t> free_prefix_;  // prefix sums of free_'s prices
    std::vector<const Item*> chosen_, best_;
    int64_t best_cost_ = std::numeric_limits<int64_t>::max();
};

// ---- Rules: wording and JSON --------------------------------------------------------------------------------

std::string describe(const Rule& r) {
    if (r.kind == "min_hotel_rating") return absl::StrCat("the hotel must be rated at least ", rating_text(r.rating));
    if (r.kind == "min_restaurant_rating") {
        return absl::StrCat("every restaurant must be rated at least ", rating_text(r.rating));
    }
    if (r.kind == "min_attraction_rating") {
        return absl::StrCat("every attraction must be rated at least ", rating_text(r.rating));
    }
    if (r.kind == "max_meal_price") return absl::StrCat("no meal may cost more than ", r.amount);
    if (r.kind == "cuisine_on_day")
        return absl::StrCat("lunch on day ", r.day, " must be at a ", r.name, " restaurant");
    if (r.kind == "attraction_category") return absl::StrCat("at least one attraction must be a ", r.name);
    if (r.kind == "distinct_cuisines") return "no two restaurants may serve the same cuisine";
    if (r.kind == "hotel_district") return absl::StrCat("the hotel must be in the ", r.name, " district");
    if (r.kind == "max_total_cost")
        return absl::StrCat("the budget was cut: the total cost must be at most ", r.amount);
    return r.kind;
}

bool is_once(const std::string& kind) { return kind != "cuisine_on_day" && kind != "attraction_category"; }

constexpr int64_t kDetailsLevel = 3;  // hotel_district (get_details) is offered from this level on

}  // namespace

// ---- World ----------------------------------------------------------------------------------------------------

const City* World::city(std::string_view name) const {
    for (const City& c : cities) {
        if (c.name == name) return &c;
    }
    for (const City& c : cities) {
        if (lower(c.name) == lower(name)) return &c;
    }
    return nullptr;
}

const Item* World::find(std::string_view id, const City** city) const {
    for (const City& c : cities) {
        for (const std::vector<Item>* items : {&c.hotels, &c.restaurants, &c.attractions}) {
            for (const Item& it : *items) {
                if (it.id == id) {
                    if (city != nullptr) *city = &c;
                    return &it;
                }
            }
        }
    }
    return nullptr;
}

Json World::to_json() const {
    Json cs = Json::array();
    for (const City& c : cities) {
        Json city = {{"name", c.name}};
        for (const std::vector<Item>* items : {&c.hotels, &c.restaurants, &c.attractions}) {
            Json rows = Json::array();
            for (const Item& it : *items) {
                Json row = {{"id", it.id},
                            {"name", it.name},
                            {"district", it.district},
                            {"price", it.price},
                            {"rating", it.rating}};
                if (it.kind != ItemKind::kHotel) row[tag_key(it.kind)] = it.tag;
                rows.push_back(std::move(row));
            }
            city[items == &c.hotels ? "hotels" : items == &c.restaurants ? "restaurants" : "attractions"] = rows;
        }
        cs.push_back(std::move(city));
    }
    return {{"id", id}, {"seed", seed}, {"cities", cs}};
}

World World::from_json(const Json& j) {
    World w;
    w.id = string_field(j, "id", "world: ");
    const std::string at = absl::StrCat("world '", w.id, "': ");
    if (j.contains("seed")) {
        if (!j["seed"].is_number_unsigned()) bad(at, "\"seed\" must be a non-negative integer");
        w.seed = j["seed"].get<uint64_t>();
    }
    const Json& cities = field(j, "cities", at);
    if (!cities.is_array() || cities.empty()) bad(at, "\"cities\" must be a non-empty list");
    std::set<std::string> ids, names;
    for (size_t i = 0; i < cities.size(); ++i) {
        City c;
        c.name = string_field(cities[i], "name", absl::StrCat(at, "cities[", i, "]: "));
        if (!names.insert(lower(c.name)).second) bad(at, absl::StrCat("city '", c.name, "' appears twice"));
        const std::string city_at = absl::StrCat(at, "city '", c.name, "': ");
        for (const auto& [key, kind] :
             {std::pair{"hotels", ItemKind::kHotel}, std::pair{"restaurants", ItemKind::kRestaurant},
              std::pair{"attractions", ItemKind::kAttraction}}) {
            const Json& rows = field(cities[i], key, city_at);
            if (!rows.is_array()) bad(city_at, absl::StrCat("\"", key, "\" must be a list"));
            std::vector<Item>& items = kind == ItemKind::kHotel        ? c.hotels
                                       : kind == ItemKind::kRestaurant ? c.restaurants
                                                                       : c.attractions;
            for (size_t k = 0; k < rows.size(); ++k) {
                const std::string item_at = absl::StrCat(city_at, key, "[", k, "]: ");
                Item it;
                it.kind = kind;
                it.id = string_field(rows[k], "id", item_at);
                if (it.id.empty() || !ids.insert(it.id).second) {
                    bad(item_at, absl::StrCat("id '", it.id, "' is empty or appears twice in the world"));
                }
                it.name = string_field(rows[k], "name", item_at);
                it.district = string_field(rows[k], "district", item_at);
                it.price = int_field(rows[k], "price", item_at, 0);
                it.rating = rating_field(rows[k], "rating", item_at);
                if (kind != ItemKind::kHotel) it.tag = string_field(rows[k], tag_key(kind), item_at);
                items.push_back(std::move(it));
            }
        }
        w.cities.push_back(std::move(c));
    }
    return w;
}

World generate_world(const std::string& id, uint64_t seed, const WorldOptions& opt) {
    const auto check = [](int64_t v, int64_t max, const char* what) {
        if (v < 1 || v > max) {
            throw ConfigError(absl::StrCat("synthetic world: ", what, " must be in [1, ", max, "], got ", v));
        }
    };
    check(opt.num_cities, 100, "num_cities");
    check(opt.hotels_per_city, 1000, "hotels_per_city");
    check(opt.restaurants_per_city, 1000, "restaurants_per_city");
    check(opt.attractions_per_city, 1000, "attractions_per_city");
    SplitMix rng(seed);
    World w{id, seed, {}};
    std::set<std::string> city_names;
    int64_t next_hotel = 1, next_restaurant = 1, next_attraction = 1;
    for (int64_t ci = 0; ci < opt.num_cities; ++ci) {
        City c;
        for (int tries = 0; tries < 50; ++tries) {
            c.name = pair_name(rng, kCityStarts, kCityEnds, "");
            if (city_names.count(c.name) == 0) break;
        }
        if (city_names.count(c.name) != 0) c.name += absl::StrCat(" ", ci + 1);  // names run out: numbered
        city_names.insert(c.name);
        const std::vector<std::string> districts = draw_distinct(rng, kDistricts, 3);
        const std::vector<std::string> cuisines = draw_distinct(rng, kCuisines, 4);
        const std::vector<std::string> categories = draw_distinct(rng, kCategories, 4);
        std::set<std::string> names;
        // A name not yet used in this city (redrawn a few times, then made unique by the id).
        const auto name = [&](const auto& draw, const std::string& item_id) {
            std::string n;
            for (int tries = 0; tries < 20; ++tries) {
                n = draw();
                if (names.insert(n).second) return n;
            }
            n += " " + item_id;
            names.insert(n);
            return n;
        };
        for (int64_t k = 0; k < opt.hotels_per_city; ++k) {
            Item h{absl::StrCat("h", next_hotel++), ItemKind::kHotel, "", rng.pick(districts), "", 0, 0};
            h.name = name([&] { return pair_name(rng, kHotelFirst, kHotelSecond, " "); }, h.id);
            h.price = 40 + 5 * rng.below(53);  // 40..300 a night
            h.rating = draw_rating(rng, h.price, 40, 300);
            c.hotels.push_back(std::move(h));
        }
        for (int64_t k = 0; k < opt.restaurants_per_city; ++k) {
            Item r{absl::StrCat("r", next_restaurant++),
                   ItemKind::kRestaurant,
                   "",
                   rng.pick(districts),
                   rng.pick(cuisines),
                   0,
                   0};
            r.name = name([&] { return pair_name(rng, kRestaurantFirst, kRestaurantSecond, " "); }, r.id);
            r.price = rng.between(8, 70);
            r.rating = draw_rating(rng, r.price, 8, 70);
            c.restaurants.push_back(std::move(r));
        }
        for (int64_t k = 0; k < opt.attractions_per_city; ++k) {
            Item a{absl::StrCat("a", next_attraction++),
                   ItemKind::kAttraction,
                   "",
                   rng.pick(districts),
                   rng.pick(categories),
                   0,
                   0};
            a.name = name([&] { return rng.pick(kAttractionFirst) + " " + category_noun(a.tag); }, a.id);
            a.price = rng.below(6) == 0 ? 0 : rng.between(5, 60);  // some are free
            a.rating = draw_rating(rng, a.price, 0, 60);
            c.attractions.push_back(std::move(a));
        }
        w.cities.push_back(std::move(c));
    }
    return w;
}

// ---- Rules, constraints, plans, tasks ---------------------------------------------------------------------------

const std::vector<std::string>& rule_kinds() {
    static const std::vector<std::string> kinds = {
        "min_hotel_rating",    "min_restaurant_rating", "min_attraction_rating", "max_meal_price", "cuisine_on_day",
        "attraction_category", "distinct_cuisines",     "hotel_district",        "max_total_cost"};
    return kinds;
}

Json Rule::to_json() const {
    Json j = {{"kind", kind}};
    if (kind == "min_hotel_rating" || kind == "min_restaurant_rating" || kind == "min_attraction_rating") {
        j["rating"] = rating;
    } else if (kind == "max_meal_price") {
        j["price"] = amount;
    } else if (kind == "max_total_cost") {
        j["budget"] = amount;
    } else if (kind == "cuisine_on_day") {
        j["day"] = day;
        j["cuisine"] = name;
    } else if (kind == "attraction_category") {
        j["category"] = name;
    } else if (kind == "hotel_district") {
        j["district"] = name;
    }
    return j;
}

Rule Rule::from_json(const Json& j) {
    Rule r;
    r.kind = string_field(j, "kind", "rule: ");
    const std::string at = absl::StrCat("rule '", r.kind, "': ");
    if (r.kind == "min_hotel_rating" || r.kind == "min_restaurant_rating" || r.kind == "min_attraction_rating") {
        r.rating = rating_field(j, "rating", at);
    } else if (r.kind == "max_meal_price") {
        r.amount = int_field(j, "price", at, 0);
    } else if (r.kind == "max_total_cost") {
        r.amount = int_field(j, "budget", at, 0);
    } else if (r.kind == "cuisine_on_day") {
        r.day = int_field(j, "day", at, 1);
        r.name = string_field(j, "cuisine", at);
    } else if (r.kind == "attraction_category") {
        r.name = string_field(j, "category", at);
    } else if (r.kind == "hotel_district") {
        r.name = string_field(j, "district", at);
    } else if (r.kind != "distinct_cuisines") {
        bad("rule: ", absl::StrCat("unknown kind '", r.kind, "' (known: ", absl::StrJoin(rule_kinds(), ", "), ")"));
    }
    return r;
}

Json TripConstraints::to_json() const {
    Json rs = Json::array();
    for (const Rule& r : rules) rs.push_back(r.to_json());
    return {{"city", city}, {"days", days}, {"budget", budget}, {"rules", rs}};
}

TripConstraints TripConstraints::from_json(const Json& j) {
    TripConstraints c;
    c.city = string_field(j, "city", "constraints: ");
    c.days = int_field(j, "days", "constraints: ", 1);
    c.budget = int_field(j, "budget", "constraints: ", 0);
    if (j.contains("rules")) {
        if (!j["rules"].is_array()) bad("constraints: ", "\"rules\" must be a list");
        for (const Json& r : j["rules"]) c.rules.push_back(Rule::from_json(r));
    }
    for (const Rule& r : c.rules) {
        if (r.kind == "cuisine_on_day" && r.day > c.days) {
            bad("constraints: ", absl::StrCat("cuisine_on_day names day ", r.day, " of a ", c.days, "-day trip"));
        }
    }
    return c;
}

std::string plan_text(const Plan& p) {
    nlohmann::ordered_json days = nlohmann::ordered_json::array();
    for (const DayPlan& d : p.days) days.push_back({{"attraction", d.attraction}, {"restaurant", d.restaurant}});
    return nlohmann::ordered_json{{"hotel", p.hotel}, {"days", days}}.dump();
}

Json Plan::to_json() const {
    Json ds = Json::array();
    for (const DayPlan& d : days) ds.push_back({{"attraction", d.attraction}, {"restaurant", d.restaurant}});
    return {{"hotel", hotel}, {"days", ds}};
}

const std::vector<std::string>& tool_names() {
    static const std::vector<std::string> names = {"list_cities", "search_hotels", "search_restaurants",
                                                   "search_attractions", "get_details"};
    return names;
}

Json Task::to_json() const {
    return {{"env", env},           {"id", id},
            {"question", question}, {"constraints", constraints.to_json()},
            {"tools", tools},       {"solution", solution.to_json()},
            {"cost", cost},         {"difficulty", difficulty}};
}

Task Task::from_json(const Json& j) {
    Task t;
    t.env = string_field(j, "env", "task: ");
    t.id = string_field(j, "id", "task: ");
    const std::string at = absl::StrCat("task '", t.id, "': ");
    t.question = string_field(j, "question", at);
    try {
        t.constraints = TripConstraints::from_json(field(j, "constraints", at));
    } catch (const DataError& e) {
        bad(at, e.what());
    }
    if (j.contains("tools")) {
        if (!j["tools"].is_array()) bad(at, "\"tools\" must be a list of tool names");
        for (const Json& name : j["tools"]) {
            const auto& known = tool_names();
            if (!name.is_string() || std::find(known.begin(), known.end(), name.get<std::string>()) == known.end()) {
                bad(at, absl::StrCat("unknown tool ", name.dump(), " (known: ", absl::StrJoin(known, ", "), ")"));
            }
            t.tools.push_back(name.get<std::string>());
        }
    } else {
        t.tools = tool_names();
    }
    if (j.contains("solution") && j["solution"].is_object()) {
        const Json& s = j["solution"];
        t.solution.hotel = s.value("hotel", std::string());
        if (s.contains("days") && s["days"].is_array()) {
            for (const Json& d : s["days"]) {
                if (d.is_object()) {
                    t.solution.days.push_back(
                        {d.value("attraction", std::string()), d.value("restaurant", std::string())});
                }
            }
        }
    }
    if (j.contains("cost")) t.cost = int_field(j, "cost", at, 0);
    if (j.contains("difficulty")) t.difficulty = int_field(j, "difficulty", at, 0);
    return t;
}

std::string task_question(const TripConstraints& c) {
    std::string q = absl::StrCat(
        "Plan a ", c.days, "-day trip to ", c.city, ". Book one hotel for all ", c.days,
        " nights, and for each day choose one attraction to visit and one restaurant for lunch; no attraction or "
        "restaurant may be used twice. The total cost - the hotel's price per night times ",
        c.days, " nights, plus every attraction's ticket, plus one meal at each restaurant - must be at most ",
        c.budget, ".");
    if (!c.rules.empty()) {
        absl::StrAppend(&q, "\nAlso:");
        for (const Rule& r : c.rules) {
            absl::StrAppend(&q, "\n- ", describe(r), r.kind == "hotel_district" ? " (get_details shows districts)" : "",
                            ";");
        }
        q.back() = '.';
    }
    absl::StrAppend(&q,
                    "\nUse the tools to look up the options. Give the final answer as a JSON object "
                    "{\"hotel\": \"<hotel id>\", \"days\": [{\"attraction\": \"<attraction id>\", \"restaurant\": "
                    "\"<restaurant id>\"}, ...]} with one entry per day, in order.");
    return q;
}

// ---- Solver ---------------------------------------------------------------------------------------------------

std::optional<Solution> solve(const World& world, const TripConstraints& c) {
    const City* city = world.city(c.city);
    if (city == nullptr || c.days < 1) return std::nullopt;
    const Limits l = limits_of(c);
    const size_t days = static_cast<size_t>(c.days);
    for (const auto& [day, cuisines] : l.cuisines) {
        if (day < 1 || day > c.days) return std::nullopt;
    }
    const std::vector<const Item*> hotels = cheapest_first(city->hotels, [&](const Item& h) { return hotel_ok(h, l); });
    if (hotels.empty()) return std::nullopt;

    const std::vector<const Item*> attrs = cheapest_attractions(
        cheapest_first(city->attractions, [&](const Item& a) { return attraction_ok(a, l); }), l.categories, days);
    if (attrs.size() != days) return std::nullopt;
    int64_t attrs_cost = 0;
    for (const Item* a : attrs) attrs_cost += a->price;

    std::vector<std::vector<const Item*>> typed;
    std::vector<size_t> typed_days, free_days;
    for (size_t d = 0; d < days; ++d) {
        const auto want = l.cuisines.find(static_cast<int64_t>(d + 1));
        if (want == l.cuisines.end()) {
            free_days.push_back(d);
            continue;
        }
        typed.push_back(cheapest_first(city->restaurants, [&](const Item& r) {
            return restaurant_ok(r, l) && std::all_of(want->second.begin(), want->second.end(),
                                                      [&](const std::string& cu) { return r.tag == cu; });
        }));
        if (typed.back().empty()) return std::nullopt;
        typed_days.push_back(d);
    }
    int64_t rests_cost = 0;
    const std::vector<const Item*> rests =
        RestaurantSearch(std::move(typed), std::move(typed_days),
                         cheapest_first(city->restaurants, [&](const Item& r) { return restaurant_ok(r, l); }),
                         std::move(free_days), l.distinct_cuisines)
            .run(&rests_cost);
    if (rests.size() != days) return std::nullopt;

    Solution s;
    s.cost = hotels.front()->price * c.days + attrs_cost + rests_cost;
    if (s.cost > l.budget) return std::nullopt;
    s.plan.hotel = hotels.front()->id;
    for (size_t d = 0; d < days; ++d) s.plan.days.push_back({attrs[d]->id, rests[d]->id});
    return s;
}

// ---- Generator ------------------------------------------------------------------------------------------------

namespace {

// A rule of `kind` with a value drawn from the city's data, preferring values the current solution violates (so
// the level is a real step); nullopt when the city offers no value.
std::optional<Rule> propose(const std::string& kind,
                            const City& city,
                            const TripConstraints& c,
                            const Solution& current,
                            const World& world,
                            SplitMix& rng) {
    Rule r;
    r.kind = kind;
    std::vector<const Item*> rests, attrs;
    for (const DayPlan& d : current.plan.days) {
        rests.push_back(world.find(d.restaurant));
        attrs.push_back(world.find(d.attraction));
    }
    const Item* hotel = world.find(current.plan.hotel);
    // A value above `floor` among `values` if any, else any value.
    const auto draw_above = [&](std::vector<double> values, double floor) -> std::optional<double> {
        std::vector<double> above;
        for (double v : values) {
            if (v > floor + kRatingSlack) above.push_back(v);
        }
        if (!above.empty()) return rng.pick(above);
        return std::nullopt;
    };
    if (kind == "min_hotel_rating" || kind == "min_restaurant_rating" || kind == "min_attraction_rating") {
        const std::vector<Item>& items = kind == "min_hotel_rating"        ? city.hotels
                                         : kind == "min_restaurant_rating" ? city.restaurants
                                                                           : city.attractions;
        double floor = 5.0;  // the lowest rating the current solution uses
        if (kind == "min_hotel_rating") {
            floor = hotel->rating;
        } else {
            for (const Item* it : kind == "min_restaurant_rating" ? rests : attrs) floor = std::min(floor, it->rating);
        }
        std::vector<double> values;
        for (const Item& it : items) values.push_back(it.rating);
        const std::optional<double> v = draw_above(values, floor);
        if (!v) return std::nullopt;
        r.rating = *v;
        return r;
    }
    if (kind == "max_meal_price") {
        int64_t top = 0;
        for (const Item* it : rests) top = std::max(top, it->price);
        std::vector<int64_t> below;
        for (const Item& it : city.restaurants) {
            if (it.price < top) below.push_back(it.price);
        }
        if (below.empty()) return std::nullopt;
        r.amount = rng.pick(below);
        return r;
    }
    if (kind == "cuisine_on_day") {
        std::vector<int64_t> free_days;
        for (int64_t d = 1; d <= c.days; ++d) {
            const bool taken = std::any_of(c.rules.begin(), c.rules.end(),
                                           [&](const Rule& o) { return o.kind == kind && o.day == d; });
            if (!taken) free_days.push_back(d);
        }
        if (free_days.empty()) return std::nullopt;
        r.day = rng.pick(free_days);
        std::vector<std::string> other, all;
        for (const Item& it : city.restaurants) {
            if (std::find(all.begin(), all.end(), it.tag) == all.end()) all.push_back(it.tag);
        }
        for (const std::string& cu : all) {
            if (cu != rests[static_cast<size_t>(r.day - 1)]->tag) other.push_back(cu);
        }
        r.name = rng.pick(other.empty() ? all : other);
        return r;
    }
    if (kind == "attraction_category") {
        int64_t required = 0;
        std::vector<std::string> fresh, uncovered;
        for (const Rule& o : c.rules) required += o.kind == kind;
        if (required >= c.days) return std::nullopt;
        for (const Item& it : city.attractions) {
            const bool asked = std::any_of(c.rules.begin(), c.rules.end(),
                                           [&](const Rule& o) { return o.kind == kind && o.name == it.tag; });
            if (asked || std::find(fresh.begin(), fresh.end(), it.tag) != fresh.end()) continue;
            fresh.push_back(it.tag);
            if (std::none_of(attrs.begin(), attrs.end(), [&](const Item* a) { return a->tag == it.tag; })) {
                uncovered.push_back(it.tag);
            }
        }
        if (fresh.empty()) return std::nullopt;
        r.name = rng.pick(uncovered.empty() ? fresh : uncovered);
        return r;
    }
    if (kind == "distinct_cuisines") return r;
    if (kind == "hotel_district") {
        std::vector<std::string> all, other;
        for (const Item& it : city.hotels) {
            if (std::find(all.begin(), all.end(), it.district) == all.end()) all.push_back(it.district);
        }
        for (const std::string& d : all) {
            if (d != hotel->district) other.push_back(d);
        }
        r.name = rng.pick(other.empty() ? all : other);
        return r;
    }
    if (kind == "max_total_cost") {
        const int64_t budget = limits_of(c).budget;
        if (budget - current.cost < 20) return std::nullopt;
        // Between the cheapest plan's cost and halfway to the budget, on a multiple of 5.
        r.amount = std::max(current.cost, (current.cost + (budget - current.cost) * rng.below(50) / 100) / 5 * 5);
        return r;
    }
    return std::nullopt;
}

}  // namespace

Task generate_task(const World& world, const std::string& id, uint64_t seed, const TaskOptions& opt) {
    if (opt.min_days < 1 || opt.max_days < opt.min_days || opt.max_difficulty < 0 || opt.attempts_per_level < 1) {
        throw ConfigError(absl::StrCat("synthetic task: need 1 <= min_days (", opt.min_days, ") <= max_days (",
                                       opt.max_days, "), max_difficulty (", opt.max_difficulty,
                                       ") >= 0 and attempts_per_level (", opt.attempts_per_level, ") >= 1"));
    }
    SplitMix rng(seed);
    std::vector<const City*> usable;  // cities with enough items for the shortest trip
    for (const City& c : world.cities) {
        if (!c.hotels.empty() && static_cast<int64_t>(c.restaurants.size()) >= opt.min_days &&
            static_cast<int64_t>(c.attractions.size()) >= opt.min_days) {
            usable.push_back(&c);
        }
    }
    if (usable.empty()) {
        throw ConfigError(absl::StrCat("synthetic task: no city of world '", world.id, "' has a hotel and ",
                                       opt.min_days, " restaurants and attractions"));
    }
    const City& city = *rng.pick(usable);
    const int64_t most = std::min<int64_t>(
        {opt.max_days, static_cast<int64_t>(city.restaurants.size()), static_cast<int64_t>(city.attractions.size())});
    Task t;
    t.env = world.id;
    t.id = id;
    t.constraints.city = city.name;
    t.constraints.days = rng.between(opt.min_days, most);
    t.constraints.budget = std::numeric_limits<int64_t>::max();
    std::optional<Solution> current = solve(world, t.constraints);
    DSRL_INTERNAL_ASSERT(current.has_value(), "a base synthetic task without a solution");
    // A budget of 1.5-2x the cheapest plan, rounded up to 10.
    t.constraints.budget = (current->cost * (150 + rng.below(51)) / 100 + 9) / 10 * 10;
    std::vector<std::string> tools = {"list_cities", "search_hotels", "search_restaurants", "search_attractions"};
    for (int64_t level = 1; level <= opt.max_difficulty; ++level) {
        bool raised = false;
        for (int64_t attempt = 0; attempt < opt.attempts_per_level && !raised; ++attempt) {
            std::vector<std::string> kinds;
            for (const std::string& k : rule_kinds()) {
                const bool present = std::any_of(t.constraints.rules.begin(), t.constraints.rules.end(),
                                                 [&](const Rule& r) { return r.kind == k; });
                if (present && is_once(k)) continue;
                if (k == "hotel_district" && level < kDetailsLevel) continue;  // the tool set is extended later
                kinds.push_back(k);
            }
            const std::optional<Rule> rule = propose(rng.pick(kinds), city, t.constraints, *current, world, rng);
            if (!rule) continue;
            TripConstraints next = t.constraints;
            next.rules.push_back(*rule);
            std::optional<Solution> s = solve(world, next);
            if (!s) continue;
            t.constraints = std::move(next);
            current = std::move(s);
            if (rule->kind == "hotel_district") tools.push_back("get_details");
            raised = true;
        }
        if (!raised) break;
    }
    t.tools = tools;
    t.question = task_question(t.constraints);
    t.solution = current->plan;
    t.cost = current->cost;
    t.difficulty = static_cast<int64_t>(t.constraints.rules.size());
    return t;
}

// ---- Verifier -------------------------------------------------------------------------------------------------

namespace {

constexpr size_t kPlanWindow = 16 * 1024;

// The index of the '}' closing the '{' at `open` (JSON strings and escapes skipped), or npos.
size_t closing_brace(std::string_view s, size_t open) {
    int64_t depth = 0;
    bool in_string = false;
    for (size_t i = open; i < s.size(); ++i) {
        const char ch = s[i];
        if (in_string) {
            if (ch == '\\') {
                ++i;
            } else if (ch == '"') {
                in_string = false;
            }
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '{') {
            ++depth;
        } else if (ch == '}' && --depth == 0) {
            return i;
        }
    }
    return std::string_view::npos;
}

// The model's plan from its JSON, or the reason it cannot be read.
std::optional<Plan> read_plan(const Json& j, std::string* error) {
    if (!j.is_object()) {
        *error = absl::StrCat("the plan must be a JSON object, got ", j.type_name());
        return std::nullopt;
    }
    if (!j.contains("hotel") || !j["hotel"].is_string()) {
        *error = "the plan needs a string \"hotel\"";
        return std::nullopt;
    }
    if (!j.contains("days") || !j["days"].is_array()) {
        *error = "the plan needs a list \"days\"";
        return std::nullopt;
    }
    Plan p;
    p.hotel = j["hotel"].get<std::string>();
    for (size_t d = 0; d < j["days"].size(); ++d) {
        const Json& day = j["days"][d];
        if (!day.is_object() || !day.contains("attraction") || !day["attraction"].is_string() ||
            !day.contains("restaurant") || !day["restaurant"].is_string()) {
            *error = absl::StrCat("day ", d + 1, " of the plan needs string \"attraction\" and \"restaurant\"");
            return std::nullopt;
        }
        p.days.push_back({day["attraction"].get<std::string>(), day["restaurant"].get<std::string>()});
    }
    return p;
}

Json verdict(const Json& violations, const Json& cost, const Json& plan, const std::string& parse_error) {
    Json details = {{"violations", violations}, {"cost", cost}, {"plan", plan}};
    if (!parse_error.empty()) details["parse_error"] = parse_error;
    const bool ok = parse_error.empty() && violations.empty();
    return {{"reward", ok ? 1.0 : 0.0}, {"details", details}};
}

}  // namespace

std::optional<Json> find_last_json_object(std::string_view text) {
    if (text.size() > kPlanWindow) text = text.substr(text.size() - kPlanWindow);
    std::optional<Json> last, last_plan;
    size_t i = 0;
    while ((i = text.find('{', i)) != std::string_view::npos) {
        const size_t end = closing_brace(text, i);
        if (end != std::string_view::npos) {
            Json v = Json::parse(text.data() + i, text.data() + end + 1, nullptr, /*allow_exceptions=*/false);
            if (v.is_object()) {
                if (v.contains("hotel") || v.contains("days")) last_plan = v;
                last = std::move(v);
                i = end + 1;
                continue;
            }
        }
        ++i;  // not an object here: maybe one starts inside
    }
    return last_plan ? last_plan : last;
}

Json verify_plan(const World& world, const Task& task, const Json& plan_json) {
    std::string error;
    const std::optional<Plan> plan = read_plan(plan_json, &error);
    if (!plan) return verdict(Json::array(), nullptr, plan_json, error);
    const TripConstraints& c = task.constraints;
    Json violations = Json::array();
    const auto violate = [&](const std::string& constraint, const std::string& detail) {
        violations.push_back({{"constraint", constraint}, {"detail", detail}});
    };
    // An item of `kind` in the task's city, or nullptr with the violation named `constraint` recorded.
    const auto resolve = [&](const std::string& id, ItemKind kind, const std::string& constraint,
                             const std::string& which) -> const Item* {
        const City* where = nullptr;
        const Item* it = world.find(id, &where);
        if (it == nullptr) {
            violate(constraint, absl::StrCat(which, ": no ", kind_name(kind), " has the id '", id, "'"));
        } else if (it->kind != kind) {
            violate(constraint,
                    absl::StrCat(which, ": '", id, "' is a ", kind_name(it->kind), ", not a ", kind_name(kind)));
        } else if (!absl::EqualsIgnoreCase(where->name, c.city)) {
            violate(constraint, absl::StrCat(which, ": '", id, "' is in ", where->name, ", not in ", c.city));
        } else {
            return it;
        }
        return nullptr;
    };
    const Item* hotel = resolve(plan->hotel, ItemKind::kHotel, "hotel", "the hotel");
    if (static_cast<int64_t>(plan->days.size()) != c.days) {
        violate("days", absl::StrCat("the plan has ", plan->days.size(), " days, the trip ", c.days));
    }
    std::vector<const Item*> attrs, rests;
    bool resolved = hotel != nullptr;
    for (size_t d = 0; d < plan->days.size(); ++d) {
        const std::string which = absl::StrCat("day ", d + 1);
        attrs.push_back(resolve(plan->days[d].attraction, ItemKind::kAttraction, "attraction", which));
        rests.push_back(resolve(plan->days[d].restaurant, ItemKind::kRestaurant, "restaurant", which));
        resolved = resolved && attrs.back() != nullptr && rests.back() != nullptr;
    }
    for (const auto& [items, name] : {std::pair{&attrs, "attraction"}, std::pair{&rests, "restaurant"}}) {
        for (size_t d = 0; d < items->size(); ++d) {
            for (size_t e = 0; e < d; ++e) {
                if ((*items)[d] != nullptr && (*items)[d] == (*items)[e]) {
                    violate(absl::StrCat("repeat_", name),
                            absl::StrCat("'", (*items)[d]->id, "' on day ", e + 1, " and again on day ", d + 1));
                }
            }
        }
    }
    Json cost = nullptr;
    if (resolved) {
        int64_t total = hotel->price * c.days;  // the hotel is booked for the trip's nights
        for (size_t d = 0; d < attrs.size(); ++d) total += attrs[d]->price + rests[d]->price;
        cost = total;
        if (total > c.budget)
            violate("budget", absl::StrCat("the total cost ", total, " exceeds the budget ", c.budget));
    }
    // The rules, each on the items that resolved (an unresolved one is already a violation).
    for (const Rule& r : c.rules) {
        const auto low = [&](const std::vector<const Item*>& items, const char* what) {
            for (size_t d = 0; d < items.size(); ++d) {
                if (items[d] != nullptr && !rated(*items[d], r.rating)) {
                    violate(r.kind, absl::StrCat("day ", d + 1, ": ", what, " '", items[d]->id, "' is rated ",
                                                 rating_text(items[d]->rating), ", below ", rating_text(r.rating)));
                }
            }
        };
        if (r.kind == "min_hotel_rating") {
            if (hotel != nullptr && !rated(*hotel, r.rating)) {
                violate(r.kind, absl::StrCat("hotel '", hotel->id, "' is rated ", rating_text(hotel->rating),
                                             ", below ", rating_text(r.rating)));
            }
        } else if (r.kind == "min_restaurant_rating") {
            low(rests, "restaurant");
        } else if (r.kind == "min_attraction_rating") {
            low(attrs, "attraction");
        } else if (r.kind == "max_meal_price") {
            for (size_t d = 0; d < rests.size(); ++d) {
                if (rests[d] != nullptr && rests[d]->price > r.amount) {
                    violate(r.kind, absl::StrCat("day ", d + 1, ": a meal at '", rests[d]->id, "' costs ",
                                                 rests[d]->price, ", more than ", r.amount));
                }
            }
        } else if (r.kind == "cuisine_on_day") {
            const size_t d = static_cast<size_t>(r.day - 1);
            if (d >= rests.size()) {
                violate(r.kind, absl::StrCat("the plan has no day ", r.day, " (", r.name, " lunch asked)"));
            } else if (rests[d] != nullptr && rests[d]->tag != r.name) {
                violate(r.kind,
                        absl::StrCat("day ", r.day, ": '", rests[d]->id, "' serves ", rests[d]->tag, ", not ", r.name));
            }
        } else if (r.kind == "attraction_category") {
            if (std::none_of(attrs.begin(), attrs.end(), [&](const Item* a) { return a && a->tag == r.name; })) {
                violate(r.kind, absl::StrCat("no attraction of the plan is a ", r.name));
            }
        } else if (r.kind == "distinct_cuisines") {
            for (size_t d = 0; d < rests.size(); ++d) {
                for (size_t e = 0; e < d; ++e) {
                    if (rests[d] && rests[e] && rests[d]->tag == rests[e]->tag) {
                        violate(r.kind, absl::StrCat("days ", e + 1, " and ", d + 1, " both serve ", rests[d]->tag));
                    }
                }
            }
        } else if (r.kind == "hotel_district") {
            if (hotel != nullptr && hotel->district != r.name) {
                violate(r.kind,
                        absl::StrCat("hotel '", hotel->id, "' is in the ", hotel->district, " district, not ", r.name));
            }
        } else if (r.kind == "max_total_cost") {
            if (resolved && cost.get<int64_t>() > r.amount) {
                violate(r.kind,
                        absl::StrCat("the total cost ", cost.get<int64_t>(), " exceeds the cut budget ", r.amount));
            }
        }
    }
    return verdict(violations, cost, plan->to_json(), "");
}

Json verify_answer(const World& world, const Task& task, const std::string& answer) {
    const std::optional<Json> plan = find_last_json_object(answer);
    if (!plan) return verdict(Json::array(), nullptr, nullptr, "no JSON object in the final answer");
    return verify_plan(world, task, *plan);
}

// ---- Tools ----------------------------------------------------------------------------------------------------

Json tool_schemas(const std::vector<std::string>& tools) {
    const Json city = {{"type", "string"}, {"description", "the city's name"}};
    Json out = Json::array();
    for (const std::string& name : tools) {
        if (name == "list_cities") {
            out.push_back(tool_schema("list_cities",
                                      "List the cities of the travel database with how many hotels, restaurants and "
                                      "attractions each has.",
                                      Json::object(), {}));
        } else if (name == "search_hotels") {
            out.push_back(tool_schema(
                "search_hotels", "List a city's hotels: id, name, price per night, rating (0-5).",
                {{"city", city},
                 {"max_price", {{"type", "number"}, {"description", "only hotels at most this price per night"}}}},
                {"city"}));
        } else if (name == "search_restaurants") {
            out.push_back(tool_schema(
                "search_restaurants", "List a city's restaurants: id, name, cuisine, price per meal, rating (0-5).",
                {{"city", city},
                 {"cuisine", {{"type", "string"}, {"description", "only restaurants of this cuisine"}}}},
                {"city"}));
        } else if (name == "search_attractions") {
            out.push_back(tool_schema(
                "search_attractions", "List a city's attractions: id, name, category, ticket price, rating (0-5).",
                {{"city", city},
                 {"category", {{"type", "string"}, {"description", "only attractions of this category"}}}},
                {"city"}));
        } else if (name == "get_details") {
            out.push_back(tool_schema(
                "get_details", "Everything about one hotel, restaurant or attraction, its district included.",
                {{"id", {{"type", "string"}, {"description", "the id, e.g. h3, r12 or a7"}}}}, {"id"}));
        } else {
            throw DataError(absl::StrCat("synthetic environment: unknown tool '", name,
                                         "' (known: ", absl::StrJoin(tool_names(), ", "), ")"));
        }
    }
    return out;
}

namespace {

// Tool results keep their keys in reading order (id first), unlike Json's sorted objects.
using OrderedJson = nlohmann::ordered_json;

OrderedJson item_row(const Item& it, const std::string& city, bool details) {
    const char* price_key = it.kind == ItemKind::kHotel        ? "price_per_night"
                            : it.kind == ItemKind::kRestaurant ? "price_per_meal"
                                                               : "ticket_price";
    OrderedJson row = {{"id", it.id}};
    if (details) row["type"] = kind_name(it.kind);
    row["name"] = it.name;
    if (it.kind != ItemKind::kHotel) row[tag_key(it.kind)] = it.tag;
    row[price_key] = it.price;
    row["rating"] = it.rating;
    if (details) {
        row["city"] = city;
        row["district"] = it.district;
    }
    return row;
}

}  // namespace

std::string answer_tool(const World& world,
                        const std::vector<std::string>& tools,
                        const std::string& name,
                        const Json& args) {
    static const std::map<std::string, std::vector<std::string>> allowed = {
        {"list_cities", {}},
        {"search_hotels", {"city", "max_price"}},
        {"search_restaurants", {"city", "cuisine"}},
        {"search_attractions", {"city", "category"}},
        {"get_details", {"id"}}};
    if (std::find(tools.begin(), tools.end(), name) == tools.end() || allowed.count(name) == 0) {
        return absl::StrCat("error: unknown tool '", name, "' (tools: ", absl::StrJoin(tools, ", "), ")");
    }
    if (!args.is_object()) return "error: the arguments must be a JSON object";
    const std::vector<std::string>& keys = allowed.at(name);
    for (const auto& [key, value] : args.items()) {
        if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
            return absl::StrCat(
                "error: ", name, " has no argument '", key, "'",
                keys.empty() ? std::string() : absl::StrCat(" (arguments: ", absl::StrJoin(keys, ", "), ")"));
        }
    }
    if (name == "list_cities") {
        OrderedJson out = OrderedJson::array();
        for (const City& c : world.cities) {
            out.push_back({{"city", c.name},
                           {"hotels", c.hotels.size()},
                           {"restaurants", c.restaurants.size()},
                           {"attractions", c.attractions.size()}});
        }
        return out.dump();
    }
    if (name == "get_details") {
        if (!args.contains("id") || !args["id"].is_string()) return "error: get_details needs a string \"id\"";
        const City* city = nullptr;
        const Item* it = world.find(args["id"].get<std::string>(), &city);
        if (it == nullptr) {
            return absl::StrCat("error: no hotel, restaurant or attraction has the id '", args["id"].get<std::string>(),
                                "'");
        }
        return item_row(*it, city->name, /*details=*/true).dump();
    }
    if (!args.contains("city") || !args["city"].is_string())
        return absl::StrCat("error: ", name, " needs a string \"city\"");
    const City* city = world.city(args["city"].get<std::string>());
    if (city == nullptr) {
        std::vector<std::string> names;
        for (const City& c : world.cities) names.push_back(c.name);
        return absl::StrCat("error: no city '", args["city"].get<std::string>(),
                            "' (cities: ", absl::StrJoin(names, ", "), ")");
    }
    const std::vector<Item>& items = name == "search_hotels"        ? city->hotels
                                     : name == "search_restaurants" ? city->restaurants
                                                                    : city->attractions;
    const char* filter_key = name == "search_hotels"        ? "max_price"
                             : name == "search_restaurants" ? "cuisine"
                                                            : "category";
    std::optional<double> max_price;
    std::optional<std::string> tag;
    if (args.contains(filter_key)) {
        const Json& f = args[filter_key];
        if (name == "search_hotels") {
            if (!f.is_number())
                return absl::StrCat("error: search_hotels: \"max_price\" must be a number, got ", f.dump());
            max_price = f.get<double>();
        } else {
            if (!f.is_string())
                return absl::StrCat("error: ", name, ": \"", filter_key, "\" must be a string, got ", f.dump());
            tag = lower(f.get<std::string>());
        }
    }
    OrderedJson out = OrderedJson::array();
    for (const Item& it : items) {
        if (max_price && static_cast<double>(it.price) > *max_price) continue;
        if (tag && lower(it.tag) != *tag) continue;
        out.push_back(item_row(it, city->name, /*details=*/false));
    }
    return out.dump();
}

// ---- Solver trajectories (the cold start) -------------------------------------------------------------------

Json solver_trajectory(const World& world, const Task& task) {
    const std::optional<Solution> s = solve(world, task.constraints);
    if (!s) throw DataError(absl::StrCat("synthetic task '", task.id, "': no plan satisfies its constraints"));
    const TripConstraints& c = task.constraints;
    const City& city = *world.city(c.city);
    const Limits l = limits_of(c);
    Json messages = Json::array(
        {{{"role", "system"}, {"content", kToolUseInThinkingPrompt}}, {{"role", "user"}, {"content", task.question}}});
    int64_t next_call = 1;
    // One assistant turn: its reasoning and calls, then the environment's results.
    const auto turn = [&](const std::string& reasoning, const std::vector<std::pair<std::string, Json>>& calls) {
        Json tool_calls = Json::array();
        std::vector<Json> results;
        for (const auto& [name, args] : calls) {
            const std::string id = absl::StrCat("call_", next_call++);
            tool_calls.push_back(
                {{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", args}}}});
            results.push_back(
                {{"role", "tool"}, {"tool_call_id", id}, {"content", answer_tool(world, task.tools, name, args)}});
        }
        messages.push_back(
            {{"role", "assistant"}, {"reasoning_content", reasoning}, {"content", ""}, {"tool_calls", tool_calls}});
        for (Json& r : results) messages.push_back(std::move(r));
    };
    const Json in_city = {{"city", city.name}};
    std::string why = absl::StrCat("I need one hotel in ", city.name, " for ", c.days, " nights");
    if (l.min_hotel > 0) absl::StrAppend(&why, ", rated at least ", rating_text(l.min_hotel));
    absl::StrAppend(&why, ". First I list the hotels with their prices per night and ratings.");
    turn(why, {{"search_hotels", in_city}});
    if (!l.districts.empty()) {
        // The cheapest hotels that pass the other hotel rules, in price order, up to the chosen one.
        std::vector<std::pair<std::string, Json>> calls;
        std::vector<std::string> ids;
        for (const Item* h : cheapest_first(city.hotels, [&](const Item& h) { return rated(h, l.min_hotel); })) {
            calls.push_back({"get_details", {{"id", h->id}}});
            ids.push_back(h->id);
            if (h->id == s->plan.hotel || calls.size() >= 10) break;
        }
        if (ids.back() != s->plan.hotel) {
            calls.push_back({"get_details", {{"id", s->plan.hotel}}});
            ids.push_back(s->plan.hotel);
        }
        turn(absl::StrCat("The hotel must be in the ", l.districts.front(),
                          " district, and the list does not show districts, so I look at the details of the "
                          "candidates, cheapest first: ",
                          absl::StrJoin(ids, ", "), "."),
             calls);
    }
    why = absl::StrCat("Next the attractions: ", c.days, " different ones");
    if (l.min_attraction > 0) absl::StrAppend(&why, ", each rated at least ", rating_text(l.min_attraction));
    if (!l.categories.empty()) absl::StrAppend(&why, ", including a ", absl::StrJoin(l.categories, " and a "));
    absl::StrAppend(&why, ". I list them with their ticket prices.");
    turn(why, {{"search_attractions", in_city}});
    why = absl::StrCat("Now the restaurants for ", c.days, " lunches, all different");
    if (l.min_restaurant > 0) absl::StrAppend(&why, ", each rated at least ", rating_text(l.min_restaurant));
    if (l.max_meal != std::numeric_limits<int64_t>::max()) absl::StrAppend(&why, ", no meal above ", l.max_meal);
    for (const auto& [day, cuisines] : l.cuisines) {
        absl::StrAppend(&why, ", ", absl::StrJoin(cuisines, " and "), " on day ", day);
    }
    if (l.distinct_cuisines) absl::StrAppend(&why, ", no cuisine twice");
    absl::StrAppend(&why, ". I list them with their cuisines and prices.");
    turn(why, {{"search_restaurants", in_city}});

    const Item& hotel = *world.find(s->plan.hotel);
    std::vector<std::string> attrs, rests;
    for (const DayPlan& d : s->plan.days) {
        const Item& a = *world.find(d.attraction);
        const Item& r = *world.find(d.restaurant);
        attrs.push_back(absl::StrCat(a.id, " (", a.tag, ", ", a.price, ")"));
        rests.push_back(absl::StrCat(r.id, " (", r.tag, ", ", r.price, ")"));
    }
    std::string summary =
        absl::StrCat("The cheapest choices that meet every requirement: hotel ", hotel.id, " at ", hotel.price,
                     " a night, ", hotel.price * c.days, " for ", c.days, " nights; attractions ",
                     absl::StrJoin(attrs, ", "), "; restaurants by day ", absl::StrJoin(rests, ", "), ". The total is ",
                     s->cost, ", within the budget of ", l.budget, ".");
    if (!c.rules.empty()) {
        std::vector<std::string> checks;
        for (const Rule& r : c.rules) checks.push_back(describe(r));
        absl::StrAppend(&summary, " Checked: ", absl::StrJoin(checks, "; "), ".");
    }
    absl::StrAppend(&summary, " No attraction or restaurant repeats. I give the plan as JSON.");
    messages.push_back({{"role", "assistant"}, {"reasoning_content", summary}, {"content", plan_text(s->plan)}});
    return {{"messages", messages}, {"tools", tool_schemas(task.tools)}};
}

// ---- The world index and the environment ------------------------------------------------------------------------

std::shared_ptr<const WorldIndex> WorldIndex::load(const std::string& path) {
    auto index = std::make_shared<WorldIndex>();
    index->path_ = path;
    try {
        fs::LineReader in(path);
        for (std::string line; in.next(line);) {
            if (absl::StripAsciiWhitespace(line).empty()) continue;
            const std::string at = absl::StrCat(path, ":", in.line_number(), ": ");
            Json row;
            try {
                row = Json::parse(line);
            } catch (const Json::exception& e) {
                throw DataError(absl::StrCat(at, "not JSON: ", e.what()));
            }
            World w;
            try {
                w = World::from_json(row);
            } catch (const DataError& e) {
                throw DataError(absl::StrCat(at, e.what()));
            }
            if (!index->by_id_.emplace(w.id, index->worlds_.size()).second) {
                throw DataError(absl::StrCat(at, "world id '", w.id, "' appears twice"));
            }
            index->worlds_.push_back(std::move(w));
        }
    } catch (const fs::IoError& e) {
        throw ConfigError(
            absl::StrCat("synthetic environment: cannot read the worlds file '", path, "': ", e.reason()));
    }
    if (index->worlds_.empty()) throw DataError(absl::StrCat(path, ": the file holds no world"));
    return index;
}

const World* WorldIndex::find(const std::string& id) const {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &worlds_[it->second];
}

Json SyntheticEnvironment::reset(const Json& task) {
    Task t;
    try {
        t = Task::from_json(task);
    } catch (const DataError& e) {
        throw DataError(absl::StrCat("synthetic environment: ", e.what()));
    }
    const World* w = worlds_->find(t.env);
    if (w == nullptr) {
        throw DataError(absl::StrCat("synthetic environment: task '", t.id, "' names env '", t.env,
                                     "', which is not in ", worlds_->path(), " (", worlds_->size(), " worlds)"));
    }
    if (w->city(t.constraints.city) == nullptr) {
        throw DataError(absl::StrCat("synthetic environment: task '", t.id, "' names city '", t.constraints.city,
                                     "', which is not in world '", t.env, "'"));
    }
    world_ = w;
    task_ = std::move(t);
    return {{"messages", Json::array({{{"role", "system"}, {"content", kToolUseInThinkingPrompt}},
                                      {{"role", "user"}, {"content", task_.question}}})},
            {"tools", tool_schemas(task_.tools)}};
}

Json SyntheticEnvironment::demonstrate(const Json& task) {
    reset(task);
    return solver_trajectory(*world_, task_);
}

Json SyntheticEnvironment::step(const Json& tool_calls) {
    if (world_ == nullptr) throw EnvironmentError("synthetic environment: step before reset");
    Json results = Json::array();
    for (const Json& call : tool_calls) {
        std::string content;
        try {
            const Json& a = call.contains("arguments") ? call["arguments"] : Json::object();
            const Json args = a.is_string() ? Json::parse(a.get<std::string>()) : a;
            content = args.is_object() ? answer_tool(*world_, task_.tools, call.value("name", std::string()), args)
                                       : "error: the arguments must be a JSON object";
        } catch (const Json::exception&) {
            content = "error: the arguments are not valid JSON";
        }
        results.push_back({{"tool_call_id", call.value("id", std::string())}, {"content", content}});
    }
    return {{"results", results}, {"done", false}};
}

Json SyntheticEnvironment::verify(const Json& trajectory) {
    if (world_ == nullptr) throw EnvironmentError("synthetic environment: verify before reset");
    return verify_answer(*world_, task_, final_answer(trajectory));
}

// ---- Files --------------------------------------------------------------------------------------------------

Dataset generate_dataset(const DatasetOptions& opt) {
    if (opt.num_envs < 1 || opt.tasks_per_env < 1) {
        throw ConfigError(absl::StrCat("synth-envs: need at least 1 env and 1 task per env, got ", opt.num_envs,
                                       " envs and ", opt.tasks_per_env, " tasks per env"));
    }
    Dataset d;
    for (int64_t i = 0; i < opt.num_envs; ++i) {
        const uint64_t world_seed = rng::derive_seed(opt.seed, i, "synth_world");
        const World w = generate_world(absl::StrCat("synth_", opt.seed, "_", i), world_seed, opt.world);
        absl::StrAppend(&d.envs_jsonl, w.to_json().dump(), "\n");
        for (int64_t j = 0; j < opt.tasks_per_env; ++j) {
            const Task t =
                generate_task(w, absl::StrCat(w.id, "/t", j), rng::derive_seed(world_seed, j, "synth_task"), opt.task);
            absl::StrAppend(&d.tasks_jsonl, t.to_json().dump(), "\n");
            absl::StrAppend(&d.cold_start_jsonl, solver_trajectory(w, t).dump(), "\n");
            ++d.difficulty_histogram[t.difficulty];
            ++d.num_tasks;
        }
        ++d.num_envs;
    }
    return d;
}

void write_dataset(const std::string& dir, const Dataset& data) {
    fs::make_dirs(dir);
    fs::write_file_atomic(dir + "/envs.jsonl", {data.envs_jsonl});
    fs::write_file_atomic(dir + "/tasks.jsonl", {data.tasks_jsonl});
    fs::write_file_atomic(dir + "/cold_start.jsonl", {data.cold_start_jsonl});
}

std::string dataset_summary(const Dataset& data) {
    std::vector<std::string> bins;
    for (const auto& [difficulty, n] : data.difficulty_histogram) bins.push_back(absl::StrCat(difficulty, ":", n));
    return absl::StrCat("synth-envs: ", data.num_envs, " envs, ", data.num_tasks, " tasks; difficulty histogram ",
                        absl::StrJoin(bins, " "));
}

}  // namespace synth

void register_synthetic_environment(EnvRegistry& reg) {
    reg.add(
        "synthetic",
        "synthetic trip-planning worlds (dsrl_tool synth-envs): tools list_cities, search_hotels, "
        "search_restaurants, search_attractions, get_details; verified plans",
        [](const Json& params) -> std::unique_ptr<Environment> {
            if (!params.is_object() || !params.contains("envs") || !params["envs"].is_string()) {
                throw ConfigError(
                    "environment 'synthetic': params need a string \"envs\" (the envs.jsonl of dsrl_tool "
                    "synth-envs)");
            }
            // One index per file, shared by every trajectory's instance.
            static std::mutex mu;
            static std::map<std::string, std::shared_ptr<const synth::WorldIndex>> cache;
            const std::string path = params["envs"].get<std::string>();
            std::shared_ptr<const synth::WorldIndex> index;
            {
                const std::lock_guard<std::mutex> lock(mu);
                auto& slot = cache[path];
                if (!slot) slot = synth::WorldIndex::load(path);
                index = slot;
            }
            return std::make_unique<synth::SyntheticEnvironment>(std::move(index));
        },
        std::vector<std::string>{"envs"});
}

}  // namespace dsrl::agent

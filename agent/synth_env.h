// Synthetic general-agent environments (issue 20 item 5c; DeepSeek-V3.2's "hard to solve, easy to verify" tasks). A
// world is a sandbox trip-planning database made from a seed: cities, each with hotels, restaurants and attractions
// (ids unique in the world: "h3", "r12", "a7"). Five tools read it — list_cities, search_hotels, search_restaurants,
// search_attractions, get_details (the only one that shows districts). A task asks for a D-day plan in one city: one
// hotel for all D nights, one attraction and one lunch restaurant a day, nothing repeated, the total cost (hotel × D
// + tickets + meals) within a budget, plus rules added one difficulty level at a time while the exact solver still
// finds a plan (the last solvable version is kept with its solution). The verifier reads the plan — the last JSON
// object of the final answer, prose around it allowed — and checks every constraint against the database: reward
// 1 when all hold, else 0, each violation named. Generation is a pure function of the seed (SplitMix64 over
// rng::mix64; no std distributions, whose output differs between standard libraries), so files are identical on
// every platform.
//
//   synth::World w = synth::generate_world("w0", seed);
//   synth::Task t = synth::generate_task(w, "w0/t0", rng::derive_seed(seed, 0, "synth_task"));
//   Json v = synth::verify_answer(w, t, "Done: {\"hotel\": \"h3\", \"days\": [...]}");   // {"reward", "details"}
//   Json row = synth::solver_trajectory(w, t);     // an SFT conversation for the cold start (issue 20 item 6)
//   EnvRegistry reg; register_builtin_environments(reg);    // "synthetic", params {"envs": "DIR/envs.jsonl"}
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/environment.h"

namespace dsrl::agent {

/// The system prompt of tool use in thinking mode: the model may call tools while it thinks (at most 20 calls) and
/// gives its final answer with no tool call. The synthetic environment's reset and its solver trajectories start
/// with it, so the cold start and RL see the same prompt.
inline constexpr const char kToolUseInThinkingPrompt[] =
    "You are a helpful assistant with access to tools. While you think, you may call the tools to look up what you "
    "need: call a tool, read its result, and go on thinking. You may make at most 20 tool calls in all. When you "
    "have what you need, give your final answer with no tool call.";

/// Registers "synthetic" in `reg` (register_builtin_environments calls it): params {"envs": PATH} name the
/// envs.jsonl written by `dsrl_tool synth-envs` (loaded once per path, shared by every trajectory); a task is one
/// row of its tasks.jsonl. A missing "envs" or file is a ConfigError, a malformed line a DataError naming file and
/// line, a task whose env id is not in the file a DataError naming the id (an EnvironmentError through the guard).
void register_synthetic_environment(EnvRegistry& reg);

namespace synth {

enum class ItemKind { kHotel, kRestaurant, kAttraction };

/// One hotel, restaurant or attraction. `price`: per night (hotel), per meal (restaurant), the ticket
/// (attraction); `rating` 0-5 in tenths; `tag`: the cuisine (restaurant), the category (attraction), "" (hotel).
struct Item {
    std::string id;
    ItemKind kind = ItemKind::kHotel;
    std::string name;
    std::string district;
    std::string tag;
    int64_t price = 0;
    double rating = 0;
};

struct City {
    std::string name;
    std::vector<Item> hotels, restaurants, attractions;
};

/// A world: one environment's database.
struct World {
    std::string id;
    uint64_t seed = 0;
    std::vector<City> cities;

    /// The city called `name` (exact, else ASCII case-insensitive), or nullptr.
    const City* city(std::string_view name) const;
    /// The item with `id` and (optionally) its city, or nullptr.
    const Item* find(std::string_view id, const City** city = nullptr) const;
    /// {"id", "seed", "cities": [{"name", "hotels": [{"id", "name", "district", "price", "rating"}], "restaurants":
    /// [... "cuisine" ...], "attractions": [... "category" ...]}]} — one line of envs.jsonl.
    Json to_json() const;
    /// DataError naming the bad key (and city and item) for a malformed world or a repeated id.
    static World from_json(const Json& j);
};

struct WorldOptions {
    int64_t num_cities = 3;
    int64_t hotels_per_city = 4;
    int64_t restaurants_per_city = 6;
    int64_t attractions_per_city = 6;
};

/// The world of `seed`; ConfigError for sizes out of range (1-100 cities, 1-1000 items of each kind).
World generate_world(const std::string& id, uint64_t seed, const WorldOptions& opt = {});

/// A rule beyond the base trip constraints. Kinds, their JSON fields and the tool that shows what they need:
///   min_hotel_rating {rating}, min_restaurant_rating {rating}, min_attraction_rating {rating}, max_meal_price
///   {price}, cuisine_on_day {day (1-based), cuisine}, attraction_category {category} (at least one attraction of
///   it), distinct_cuisines {} (no cuisine twice), hotel_district {district} (needs get_details), max_total_cost
///   {budget} (a tighter budget).
struct Rule {
    std::string kind;
    double rating = 0;
    int64_t amount = 0;  ///< max_meal_price's price, max_total_cost's budget
    int64_t day = 0;
    std::string name;  ///< the cuisine, category or district
    Json to_json() const;
    /// DataError naming the kind or the field.
    static Rule from_json(const Json& j);
};

/// The names of every rule kind, in the order above.
const std::vector<std::string>& rule_kinds();

struct TripConstraints {
    std::string city;
    int64_t days = 0;
    int64_t budget = 0;
    std::vector<Rule> rules;
    /// {"city", "days", "budget", "rules": [...]}.
    Json to_json() const;
    static TripConstraints from_json(const Json& j);
};

struct DayPlan {
    std::string attraction, restaurant;
};

struct Plan {
    std::string hotel;
    std::vector<DayPlan> days;
    /// {"hotel", "days": [{"attraction", "restaurant"}, ...]}.
    Json to_json() const;
};

/// The plan as the answer's JSON text, keys in the order of the question's layout: {"hotel": ..., "days": [...]}.
std::string plan_text(const Plan& p);

/// The tools' names, in order: list_cities, search_hotels, search_restaurants, search_attractions, get_details.
const std::vector<std::string>& tool_names();

/// One task (a line of tasks.jsonl): {"env", "id", "question", "constraints", "tools", "solution", "cost",
/// "difficulty"}. `tools` are the tools the task offers (get_details only where a rule needs it); `difficulty` the
/// number of rules; `solution` the solver's plan and `cost` its total.
struct Task {
    std::string env, id, question;
    TripConstraints constraints;
    std::vector<std::string> tools;
    Plan solution;
    int64_t cost = 0;
    int64_t difficulty = 0;
    Json to_json() const;
    /// DataError naming the key; "solution", "cost", "difficulty" and "tools" are optional (all tools when absent).
    static Task from_json(const Json& j);
};

/// The task's wording: the trip, the budget, one line per rule, the answer's JSON layout.
std::string task_question(const TripConstraints& c);

struct Solution {
    Plan plan;
    int64_t cost = 0;
};

/// An exact solver: the cheapest valid plan (ties to database order), or nullopt when none exists (an unknown city,
/// too few items, or the cheapest plan over the budget). The constraints separate into a hotel, an attraction and a
/// restaurant part joined only by the total cost, so the cheapest plan is the cheapest of each part: the hotel by
/// a scan; the attractions (ratings, categories to cover) greedily — the cheapest of each required category, then
/// the cheapest others, optimal by an exchange argument; the day-by-day restaurants (ratings, meal prices, cuisines
/// per day, distinct cuisines) by backtracking with branch and bound. No plan exists when a part has none or the
/// cheapest total exceeds the budget (tested against brute force over every plan of small worlds).
std::optional<Solution> solve(const World& world, const TripConstraints& c);

struct TaskOptions {
    int64_t min_days = 2;
    int64_t max_days = 3;
    int64_t max_difficulty = 6;      ///< the most rules added
    int64_t attempts_per_level = 6;  ///< proposals tried at a level before the generator stops
};

/// Proposes a base task in a random city (D days, a budget of 1.5-2× the cheapest plan's cost), then raises the
/// difficulty one rule at a time: a rule kind is drawn among those usable, its value picked from the city's data so
/// that it rules out the current solution where it can, and it is kept when the solver still finds a plan; after
/// `attempts_per_level` unsolvable proposals in a row the generator stops at the last solvable version. Kinds that
/// need a tool the task does not offer yet are modelled as the paper's tool-set extension: hotel_district needs
/// get_details, which is offered only from level 3 on (and then added to the task's tools). ConfigError for bad
/// options.
Task generate_task(const World& world, const std::string& id, uint64_t seed, const TaskOptions& opt = {});

/// The last JSON object of `text` (an object with a "hotel" or "days" key preferred over other objects; nested
/// objects are part of their outermost one), or nullopt; only the last 16 KiB are searched.
std::optional<Json> find_last_json_object(std::string_view text);

/// Checks `plan` (the model's JSON) against the task and the world: {"reward": 1 or 0, "details": {"violations":
/// [{"constraint", "detail"}], "cost": total or null, "plan": the plan, "parse_error": why (only when the plan
/// could not be read)}}. Constraint names: hotel, days, attraction, restaurant, repeat_attraction,
/// repeat_restaurant, budget and the rule kinds. Never throws for a bad plan.
Json verify_plan(const World& world, const Task& task, const Json& plan);
/// verify_plan on the last JSON object of `answer` (a parse error when there is none).
Json verify_answer(const World& world, const Task& task, const std::string& answer);

/// The JSON schemas (tool_schema) of `tools`; DataError for an unknown name.
Json tool_schemas(const std::vector<std::string>& tools);
/// The text answering a call of `name` with the JSON object `args`, over `world`, offering `tools`. A bad call
/// (a tool not offered, an unknown argument, city or id, an argument of the wrong type) is answered "error: ...".
std::string answer_tool(const World& world,
                        const std::vector<std::string>& tools,
                        const std::string& name,
                        const Json& args);

/// A cold-start SFT row (issue 20 item 6), {"messages": [...], "tools": [...]} in the OpenAI layout: the system
/// prompt kToolUseInThinkingPrompt, the question, assistant turns with "reasoning_content" (what is looked up and
/// why) and "tool_calls" ([{"id", "type": "function", "function": {"name", "arguments": {...}}}]), "tool"
/// messages with the environment's real results, and a final assistant turn whose reasoning sums up the choice and
/// whose content is the solver's JSON plan. It verifies with reward 1; DataError when the task has no solution.
Json solver_trajectory(const World& world, const Task& task);

/// The worlds of an envs.jsonl file, by id (immutable; shared by every instance of the environment).
class WorldIndex {
public:
    /// ConfigError when the file cannot be read; DataError naming file:line for a malformed line or a repeated id.
    static std::shared_ptr<const WorldIndex> load(const std::string& path);
    const World* find(const std::string& id) const;
    const std::string& path() const { return path_; }
    size_t size() const { return worlds_.size(); }

private:
    std::string path_;
    std::vector<World> worlds_;
    std::map<std::string, size_t> by_id_;
};

/// The environment (agent/environment.h protocol). reset(task row) → {"messages": [system
/// kToolUseInThinkingPrompt, user question], "tools": the task's tools}; step answers each call with answer_tool
/// (never done: the rollout decides when the model has stopped calling); verify = verify_answer on the last
/// assistant message. A malformed task, or one whose env or city is unknown, is a DataError naming it.
class SyntheticEnvironment : public Environment {
public:
    explicit SyntheticEnvironment(std::shared_ptr<const WorldIndex> worlds) : worlds_(std::move(worlds)) {}
    Json reset(const Json& task) override;
    Json step(const Json& tool_calls) override;
    Json verify(const Json& trajectory) override;
    /// solver_trajectory of the task (the cold start's demonstration).
    Json demonstrate(const Json& task) override;

private:
    std::shared_ptr<const WorldIndex> worlds_;
    const World* world_ = nullptr;
    Task task_;
};

/// What `dsrl_tool synth-envs` writes, as text.
struct DatasetOptions {
    int64_t num_envs = 1;
    int64_t tasks_per_env = 1;
    uint64_t seed = 0;
    WorldOptions world;
    TaskOptions task;
};
struct Dataset {
    std::string envs_jsonl;        ///< one World::to_json per line; world i has id "synth_<seed>_<i>"
    std::string tasks_jsonl;       ///< one Task::to_json per line; task j of world W has id "W/t<j>"
    std::string cold_start_jsonl;  ///< one solver_trajectory per task, in the order of tasks.jsonl
    int64_t num_envs = 0, num_tasks = 0;
    std::map<int64_t, int64_t> difficulty_histogram;  ///< difficulty -> number of tasks
};
/// Deterministic in the options: world i from rng::derive_seed(seed, i, "synth_world"), task j of it from
/// derive_seed(world seed, j, "synth_task"). ConfigError for bad counts.
Dataset generate_dataset(const DatasetOptions& opt);
/// Writes DIR/envs.jsonl, DIR/tasks.jsonl and DIR/cold_start.jsonl, each atomically (DIR created if missing).
void write_dataset(const std::string& dir, const Dataset& data);
/// "synth-envs: 4 envs, 12 tasks; difficulty histogram 3:2 4:5 6:5".
std::string dataset_summary(const Dataset& data);

}  // namespace synth
}  // namespace dsrl::agent

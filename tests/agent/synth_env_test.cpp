// The synthetic general-agent environments (issue 20 item 5c, agent/synth_env.h): generation is deterministic in the
// seed, every task is solvable and its stored solution verifies, the solver agrees with brute force, wrong plans
// verify 0 naming the broken constraint, difficulty adds rules, the environment round trip through the guard, the
// solver trajectories verify and render in the DeepSeek-V3.2 format, and a bad envs.jsonl names its file and line.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include <absl/strings/ascii.h>

#include "agent/search_env.h"
#include "agent/synth_env.h"
#include "core/error.h"
#include "core/fs.h"
#include "tests/test_util.h"
#include "text/chat_format.h"

namespace dsrl::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace synth;

std::vector<Json> jsonl(const std::string& text) {
    std::vector<Json> rows;
    size_t start = 0;
    for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
        rows.push_back(Json::parse(text.substr(start, end - start)));
    }
    return rows;
}

std::set<std::string> broken(const Json& verdict) {
    std::set<std::string> names;
    for (const Json& v : verdict.at("details").at("violations")) names.insert(v.at("constraint").get<std::string>());
    return names;
}

Json call(const std::string& id, const std::string& name, const Json& args) {
    return {{"id", id}, {"name", name}, {"arguments", args.dump()}};
}

Json answer(const std::string& text) {
    return {{"messages",
             Json::array({{{"role", "user"}, {"content", "plan it"}}, {{"role", "assistant"}, {"content", text}}})}};
}

DatasetOptions options(uint64_t seed) {
    DatasetOptions opt;
    opt.num_envs = 4;
    opt.tasks_per_env = 6;
    opt.seed = seed;
    return opt;
}

TEST(SynthEnvTest, SameSeedGivesByteIdenticalFilesAndOtherSeedsDiffer) {
    const Dataset a = generate_dataset(options(7));
    const Dataset b = generate_dataset(options(7));
    const Dataset c = generate_dataset(options(8));
    EXPECT_EQ(a.envs_jsonl, b.envs_jsonl);
    EXPECT_EQ(a.tasks_jsonl, b.tasks_jsonl);
    EXPECT_EQ(a.cold_start_jsonl, b.cold_start_jsonl);
    EXPECT_NE(a.envs_jsonl, c.envs_jsonl);
    EXPECT_NE(a.tasks_jsonl, c.tasks_jsonl);
    EXPECT_NE(a.cold_start_jsonl, c.cold_start_jsonl);
    EXPECT_EQ(a.num_envs, 4);
    EXPECT_EQ(a.num_tasks, 24);
    int64_t histogram_total = 0;
    for (const auto& [difficulty, n] : a.difficulty_histogram) histogram_total += n;
    EXPECT_EQ(histogram_total, 24);
    EXPECT_THAT(dataset_summary(a), HasSubstr("4 envs, 24 tasks; difficulty histogram"));

    testing::TempDir tmp;
    write_dataset(tmp.path() + "/out", a);
    EXPECT_EQ(fs::read_file(tmp.path() + "/out/envs.jsonl"), a.envs_jsonl);
    EXPECT_EQ(fs::read_file(tmp.path() + "/out/tasks.jsonl"), a.tasks_jsonl);
    EXPECT_EQ(fs::read_file(tmp.path() + "/out/cold_start.jsonl"), a.cold_start_jsonl);
    EXPECT_EQ(fs::list_dir(tmp.path() + "/out"),
              (std::vector<std::string>{"cold_start.jsonl", "envs.jsonl", "tasks.jsonl"}))
        << "no temporary file is left";
}

TEST(SynthEnvTest, WorldsAreWellFormedAndRoundTripThroughJson) {
    const World w = generate_world("w", 42);
    ASSERT_EQ(w.cities.size(), 3u);
    std::set<std::string> ids, cities;
    for (const City& c : w.cities) {
        EXPECT_TRUE(cities.insert(c.name).second) << c.name;
        EXPECT_EQ(c.hotels.size(), 4u);
        EXPECT_EQ(c.restaurants.size(), 6u);
        EXPECT_EQ(c.attractions.size(), 6u);
        std::set<std::string> names;
        for (const std::vector<Item>* items : {&c.hotels, &c.restaurants, &c.attractions}) {
            for (const Item& it : *items) {
                EXPECT_TRUE(ids.insert(it.id).second) << it.id;
                EXPECT_TRUE(names.insert(it.name).second) << it.name << " twice in " << c.name;
                EXPECT_GE(it.rating, 2.5);
                EXPECT_LE(it.rating, 5.0);
                EXPECT_GE(it.price, 0);
                EXPECT_EQ(it.tag.empty(), it.kind == ItemKind::kHotel);
                EXPECT_EQ(w.find(it.id), &it);
            }
        }
        // A task's tool outputs stay small.
        for (const char* tool : {"search_hotels", "search_restaurants", "search_attractions"}) {
            EXPECT_LT(answer_tool(w, tool_names(), tool, {{"city", c.name}}).size(), 800u) << tool;
        }
    }
    EXPECT_EQ(World::from_json(w.to_json()).to_json(), w.to_json());
    EXPECT_EQ(w.city(absl::AsciiStrToLower(w.cities[1].name)), &w.cities[1]) << "city names are case-insensitive";
    EXPECT_THROW(generate_world("w", 1, {.num_cities = 0}), ConfigError);
}

TEST(SynthEnvTest, EveryTaskIsSolvableAndItsSolutionVerifies) {
    const Dataset d = generate_dataset(options(3));
    std::map<std::string, World> worlds;
    for (const Json& row : jsonl(d.envs_jsonl)) {
        World w = World::from_json(row);
        worlds.emplace(w.id, std::move(w));
    }
    const std::vector<Json> tasks = jsonl(d.tasks_jsonl);
    ASSERT_EQ(tasks.size(), 24u);
    for (const Json& row : tasks) {
        const Task t = Task::from_json(row);
        EXPECT_EQ(t.to_json(), row);
        const World& w = worlds.at(t.env);
        const std::optional<Solution> s = solve(w, t.constraints);
        ASSERT_TRUE(s.has_value()) << row.dump();
        EXPECT_EQ(s->plan.to_json(), t.solution.to_json());
        EXPECT_EQ(s->cost, t.cost);
        EXPECT_LE(t.cost, t.constraints.budget);
        const Json v = verify_plan(w, t, t.solution.to_json());
        EXPECT_EQ(v.at("reward"), 1.0) << v.dump();
        EXPECT_EQ(v.at("details").at("cost"), t.cost);
        EXPECT_EQ(t.question, task_question(t.constraints));
        EXPECT_THAT(t.question, HasSubstr(t.constraints.city));
    }
}

// Every plan of a small world, checked by the verifier: the solver finds a plan exactly when one exists, at the
// lowest cost.
TEST(SynthEnvTest, SolverAgreesWithBruteForce) {
    const WorldOptions small{
        .num_cities = 2, .hotels_per_city = 3, .restaurants_per_city = 4, .attractions_per_city = 4};
    uint64_t lcg = 12345;
    const auto draw = [&](int64_t n) {
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<int64_t>((lcg >> 33) % static_cast<uint64_t>(n));
    };
    int64_t feasible = 0, infeasible = 0;
    for (uint64_t seed = 0; seed < 12; ++seed) {
        const World w = generate_world("w", seed, small);
        for (int round = 0; round < 6; ++round) {
            const City& city = w.cities[static_cast<size_t>(draw(2))];
            Task t;
            t.constraints.city = city.name;
            t.constraints.days = 2 + draw(2);
            t.constraints.budget = 150 + 50 * draw(20);
            for (int64_t k = draw(4); k > 0; --k) {
                Rule r;
                r.kind = rule_kinds()[static_cast<size_t>(draw(static_cast<int64_t>(rule_kinds().size())))];
                r.rating = static_cast<double>(30 + draw(16)) / 10.0;
                r.amount = r.kind == "max_total_cost" ? 150 + 50 * draw(20) : 10 + 5 * draw(12);
                r.day = 1 + draw(t.constraints.days);
                const Item& any = city.restaurants[static_cast<size_t>(draw(4))];
                const Item& attraction = city.attractions[static_cast<size_t>(draw(4))];
                r.name = r.kind == "cuisine_on_day"        ? any.tag
                         : r.kind == "attraction_category" ? attraction.tag
                                                           : city.hotels[static_cast<size_t>(draw(3))].district;
                t.constraints.rules.push_back(r);
            }
            std::optional<int64_t> best;
            const size_t days = static_cast<size_t>(t.constraints.days);
            // Every (hotel, attraction tuple, restaurant tuple), tuples as base-4 counters.
            const size_t tuples = days == 2 ? 16 : 64;
            for (const Item& h : city.hotels) {
                for (size_t a = 0; a < tuples; ++a) {
                    for (size_t r = 0; r < tuples; ++r) {
                        Plan p{h.id, {}};
                        std::set<size_t> seen_a, seen_r;
                        for (size_t d = 0, x = a, y = r; d < days; ++d, x /= 4, y /= 4) {
                            p.days.push_back({city.attractions[x % 4].id, city.restaurants[y % 4].id});
                            seen_a.insert(x % 4);
                            seen_r.insert(y % 4);
                        }
                        if (seen_a.size() < days || seen_r.size() < days) continue;  // repeats never verify
                        const Json v = verify_plan(w, t, p.to_json());
                        if (v.at("reward") == 1.0) {
                            const int64_t cost = v.at("details").at("cost").get<int64_t>();
                            if (!best || cost < *best) best = cost;
                        }
                    }
                }
            }
            const std::optional<Solution> s = solve(w, t.constraints);
            ASSERT_EQ(s.has_value(), best.has_value()) << t.constraints.to_json().dump();
            if (s) {
                EXPECT_EQ(s->cost, *best) << t.constraints.to_json().dump();
                EXPECT_EQ(verify_plan(w, t, s->plan.to_json()).at("reward"), 1.0);
                ++feasible;
            } else {
                ++infeasible;
            }
        }
    }
    EXPECT_GT(feasible, 10);
    EXPECT_GT(infeasible, 10);
}

TEST(SynthEnvTest, WrongPlansVerifyZeroNamingTheConstraint) {
    const World w = generate_world("w", 5);
    const Task t = generate_task(w, "w/t", 11, {.min_days = 3, .max_days = 3, .max_difficulty = 0});
    ASSERT_EQ(t.difficulty, 0);
    const Json good = t.solution.to_json();
    ASSERT_EQ(verify_plan(w, t, good).at("reward"), 1.0);
    const City& city = *w.city(t.constraints.city);
    const auto expect_broken = [&](const Task& task, const Json& plan, const std::string& name) {
        const Json v = verify_plan(w, task, plan);
        EXPECT_EQ(v.at("reward"), 0.0) << name;
        EXPECT_TRUE(broken(v).count(name)) << name << ": " << v.dump();
    };

    Json repeat = good;
    repeat["days"][2]["attraction"] = good["days"][0]["attraction"];
    expect_broken(t, repeat, "repeat_attraction");
    repeat = good;
    repeat["days"][1]["restaurant"] = good["days"][0]["restaurant"];
    expect_broken(t, repeat, "repeat_restaurant");
    Task tight = t;
    tight.constraints.budget = t.cost - 1;
    expect_broken(tight, good, "budget");
    tight = t;
    tight.constraints.rules.push_back({.kind = "max_total_cost", .amount = t.cost - 1});
    expect_broken(tight, good, "max_total_cost");

    const Item& hotel = *w.find(t.solution.hotel);
    const Item& lunch1 = *w.find(t.solution.days[0].restaurant);
    Task ruled = t;
    ruled.constraints.rules.push_back({.kind = "min_hotel_rating", .rating = hotel.rating + 0.1});
    expect_broken(ruled, good, "min_hotel_rating");
    ruled = t;
    ruled.constraints.rules.push_back({.kind = "cuisine_on_day", .day = 1, .name = lunch1.tag + "_other"});
    expect_broken(ruled, good, "cuisine_on_day");
    ruled = t;
    ruled.constraints.rules.push_back({.kind = "hotel_district", .name = "Nowhere"});
    expect_broken(ruled, good, "hotel_district");
    ruled = t;
    ruled.constraints.rules.push_back({.kind = "attraction_category", .name = "volcano"});
    expect_broken(ruled, good, "attraction_category");
    ruled = t;
    ruled.constraints.rules.push_back({.kind = "max_meal_price", .amount = lunch1.price - 1});
    expect_broken(ruled, good, "max_meal_price");

    Json wrong = good;
    wrong["hotel"] = "h999";
    expect_broken(t, wrong, "hotel");
    wrong = good;
    wrong["days"][0]["attraction"] = good["days"][0]["restaurant"];
    expect_broken(t, wrong, "attraction");
    const City& other = w.cities[0].name == city.name ? w.cities[1] : w.cities[0];
    wrong = good;
    wrong["days"][0]["restaurant"] = other.restaurants[0].id;
    expect_broken(t, wrong, "restaurant");
    wrong = good;
    wrong["days"].erase(2);
    expect_broken(t, wrong, "days");

    // The answer text: prose and code fences around the plan are fine; no plan or a malformed one is a parse error.
    const std::string plan_text = good.dump();
    EXPECT_EQ(
        verify_answer(w, t, "Here is the plan:\n```json\n" + plan_text + "\n```\nEnjoy {your} trip!").at("reward"),
        1.0);
    EXPECT_EQ(verify_answer(w, t, "{\"draft\": 1} then " + plan_text + " and {\"note\": \"ok\"}").at("reward"), 1.0);
    const Json none = verify_answer(w, t, "I could not find a plan.");
    EXPECT_EQ(none.at("reward"), 0.0);
    EXPECT_THAT(none.at("details").at("parse_error").get<std::string>(), HasSubstr("no JSON object"));
    const Json shape = verify_answer(w, t, "{\"hotel\": 3, \"days\": []}");
    EXPECT_EQ(shape.at("reward"), 0.0);
    EXPECT_THAT(shape.at("details").at("parse_error").get<std::string>(), HasSubstr("string \"hotel\""));
    EXPECT_EQ(verify_answer(w, t, "{\"hotel\": \"h1\", \"days\": [{\"attraction\": 7}]}").at("reward"), 0.0);
    EXPECT_EQ(verify_answer(w, t, std::string(100000, '{')).at("reward"), 0.0) << "never throws";
}

TEST(SynthEnvTest, FindsTheLastJsonObject) {
    EXPECT_FALSE(find_last_json_object("no braces").has_value());
    EXPECT_FALSE(find_last_json_object("{not json}").has_value());
    EXPECT_EQ(*find_last_json_object("a {\"x\": 1} b {\"y\": {\"z\": \"}\"}} c"), Json::parse(R"({"y": {"z": "}"}})"));
    EXPECT_EQ(*find_last_json_object(R"({"hotel": "h1", "days": []} and {"other": 2})"),
              Json::parse(R"({"hotel": "h1", "days": []})"))
        << "a plan-like object is preferred";
    EXPECT_EQ(*find_last_json_object("{ {\"a\": 1}"), Json::parse(R"({"a": 1})")) << "an unclosed brace before it";
}

TEST(SynthEnvTest, DifficultyAddsRules) {
    const World w = generate_world("w", 9);
    int64_t highest = 0, with_details = 0;
    for (uint64_t seed = 0; seed < 20; ++seed) {
        Task previous;
        for (int64_t k = 0; k <= 6; ++k) {
            const Task t = generate_task(w, "w/t", seed, {.max_difficulty = k});
            EXPECT_EQ(t.difficulty, static_cast<int64_t>(t.constraints.rules.size()));
            EXPECT_LE(t.difficulty, k);
            if (k == 0) {
                EXPECT_EQ(t.difficulty, 0);
            } else {
                // Level k is level k-1 plus a rule (or the generator had stopped).
                ASSERT_GE(t.difficulty, previous.difficulty);
                EXPECT_LE(t.difficulty, previous.difficulty + 1);
                for (size_t i = 0; i < previous.constraints.rules.size(); ++i) {
                    EXPECT_EQ(t.constraints.rules[i].to_json(), previous.constraints.rules[i].to_json());
                }
                EXPECT_EQ(t.constraints.budget, previous.constraints.budget);
                EXPECT_GE(t.cost, previous.cost) << "a rule never makes the cheapest plan cheaper";
            }
            bool district = false;
            for (size_t i = 0; i < t.constraints.rules.size(); ++i) {
                if (t.constraints.rules[i].kind == "hotel_district") {
                    district = true;
                    EXPECT_GE(i, 2u) << "get_details is offered from level 3 on";
                }
            }
            const bool details = std::count(t.tools.begin(), t.tools.end(), "get_details") == 1;
            EXPECT_EQ(details, district) << "the tool set is extended exactly when a rule needs it";
            with_details += district;
            highest = std::max(highest, t.difficulty);
            previous = t;
        }
    }
    EXPECT_GE(highest, 5);
    EXPECT_GT(with_details, 0);
}

TEST(SynthEnvTest, EnvironmentRoundTripThroughTheGuard) {
    testing::TempDir tmp;
    const Dataset d = generate_dataset(options(1));
    write_dataset(tmp.path(), d);
    const std::string envs = tmp.path() + "/envs.jsonl";
    EnvRegistry reg;
    register_builtin_environments(reg);
    ASSERT_TRUE(reg.contains("synthetic"));
    Json task = jsonl(d.tasks_jsonl).at(0);
    task.erase("tools");  // every tool, get_details included
    const Task t = Task::from_json(task);
    GuardedEnvironment env(reg.create("synthetic", {{"envs", envs}}), "synthetic", 5.0);
    const Json first = env.reset(task);
    ASSERT_EQ(first.at("messages").size(), 2u);
    EXPECT_EQ(first.at("messages")[0].at("content"), kToolUseInThinkingPrompt);
    EXPECT_EQ(first.at("messages")[1].at("content"), t.question);
    EXPECT_EQ(first.at("tools").size(), 5u);

    const std::string city = t.constraints.city;
    const Json r = env.step(Json::array(
        {call("a", "search_hotels", {{"city", city}}),
         call("b", "search_restaurants", {{"city", absl::AsciiStrToUpper(city)}, {"cuisine", "no-such-cuisine"}}),
         call("c", "get_details", {{"id", t.solution.hotel}}),
         call("d", "search_hotels", {{"city", "Atlantis"}}),
         call("e", "search_hotels", {{"city", 3}}),
         call("f", "fly", Json::object()),
         call("g", "get_details", {{"id", "zz"}}),
         {{"id", "h"}, {"name", "list_cities"}, {"arguments", "{not json"}},
         call("i", "search_hotels", {{"city", city}, {"max_price", "cheap"}}),
         call("j", "search_hotels", {{"city", city}, {"stars", 5}}),
         {{"id", "k"}, {"name", "list_cities"}, {"arguments", Json::object()}},
         call("l", "search_hotels", {{"city", city}, {"max_price", 0}})}));
    const Json& res = r.at("results");
    ASSERT_EQ(res.size(), 12u);
    EXPECT_EQ(r.at("done"), false);
    const auto text = [&](size_t i) { return res[i].at("content").get<std::string>(); };
    EXPECT_THAT(text(0), HasSubstr("\"id\":\"" + t.solution.hotel + "\""));
    EXPECT_THAT(text(0), HasSubstr("price_per_night"));
    EXPECT_EQ(text(1), "[]");
    EXPECT_THAT(text(2), HasSubstr("\"district\""));
    EXPECT_THAT(text(3), HasSubstr("error: no city 'Atlantis' (cities: "));
    EXPECT_THAT(text(4), HasSubstr("needs a string \"city\""));
    EXPECT_THAT(text(5), HasSubstr("unknown tool 'fly'"));
    EXPECT_THAT(text(6), HasSubstr("no hotel, restaurant or attraction has the id 'zz'"));
    EXPECT_THAT(text(7), HasSubstr("not valid JSON"));
    EXPECT_THAT(text(8), HasSubstr("\"max_price\" must be a number"));
    EXPECT_THAT(text(9), HasSubstr("has no argument 'stars'"));
    EXPECT_THAT(text(10), HasSubstr(city));
    EXPECT_EQ(text(11), "[]");
    EXPECT_EQ(res[6].at("tool_call_id"), "g");

    const Json right = env.verify(answer("My plan: " + t.solution.to_json().dump()));
    EXPECT_EQ(right.at("reward"), 1.0) << right.dump();
    Json repeated = t.solution.to_json();
    repeated["days"][1] = repeated["days"][0];
    const Json wrong = env.verify(answer(repeated.dump()));
    EXPECT_EQ(wrong.at("reward"), 0.0);
    EXPECT_TRUE(broken(wrong).count("repeat_attraction"));

    // A task without get_details answers its call as an unknown tool.
    Json limited = task;
    limited["tools"] = {"list_cities", "search_hotels", "search_restaurants", "search_attractions"};
    GuardedEnvironment env2(reg.create("synthetic", {{"envs", envs}}), "synthetic", 5.0);
    EXPECT_EQ(env2.reset(limited).at("tools").size(), 4u);
    EXPECT_THAT(env2.step(Json::array({call("a", "get_details", {{"id", "h1"}})}))
                    .at("results")[0]
                    .at("content")
                    .get<std::string>(),
                HasSubstr("unknown tool 'get_details'"));

    // The environment's own failures: an unknown env id or a malformed task, an error naming it; bad params.
    Json unknown = task;
    unknown["env"] = "no_such_env";
    GuardedEnvironment env3(reg.create("synthetic", {{"envs", envs}}), "synthetic", 5.0);
    try {
        env3.reset(unknown);
        ADD_FAILURE() << "an unknown env id was accepted";
    } catch (const EnvironmentError& e) {
        EXPECT_THAT(e.what(), HasSubstr("'no_such_env'"));
    }
    EXPECT_THROW(reg.create("synthetic", {{"envs", envs}})->reset({{"env", "x"}}), DataError);
    EXPECT_THROW(reg.create("synthetic", Json::object()), ConfigError);
    EXPECT_THROW(reg.create("synthetic", {{"envs", tmp.path() + "/missing.jsonl"}}), ConfigError);
}

TEST(SynthEnvTest, SolverTrajectoriesVerifyRenderAndReplay) {
    testing::TempDir tmp;
    const Dataset d = generate_dataset(options(2));
    write_dataset(tmp.path(), d);
    const auto worlds = WorldIndex::load(tmp.path() + "/envs.jsonl");
    const std::vector<Json> tasks = jsonl(d.tasks_jsonl);
    const std::vector<Json> rows = jsonl(d.cold_start_jsonl);
    ASSERT_EQ(rows.size(), tasks.size());
    const auto fmt = text::make_chat_format("deepseek_v32");
    int64_t with_details = 0;
    for (size_t i = 0; i < tasks.size(); ++i) {
        const Task t = Task::from_json(tasks[i]);
        const World& w = *worlds->find(t.env);
        const Json& row = rows[i];
        EXPECT_EQ(row, solver_trajectory(w, t));
        const Json& messages = row.at("messages");
        EXPECT_EQ(messages[0].at("content"), kToolUseInThinkingPrompt);
        EXPECT_EQ(messages[1].at("content"), t.question);
        EXPECT_EQ(row.at("tools"), tool_schemas(t.tools));
        EXPECT_EQ(verify_answer(w, t, final_answer(row)).at("reward"), 1.0) << t.id;

        // Replayed through the environment, every tool result is the environment's.
        SyntheticEnvironment env(worlds);
        env.reset(tasks[i]);
        int64_t num_calls = 0;
        for (size_t m = 0; m < messages.size(); ++m) {
            const Json& msg = messages[m];
            if (msg.at("role") != "assistant") continue;
            EXPECT_FALSE(msg.at("reasoning_content").get<std::string>().empty());
            if (!msg.contains("tool_calls")) {
                EXPECT_EQ(m, messages.size() - 1) << "only the final answer has no tool call";
                continue;
            }
            Json calls = Json::array();
            for (const Json& c : msg.at("tool_calls")) {
                EXPECT_EQ(c.at("type"), "function");
                calls.push_back({{"id", c.at("id")},
                                 {"name", c.at("function").at("name")},
                                 {"arguments", c.at("function").at("arguments")}});
                with_details += c.at("function").at("name") == "get_details";
            }
            num_calls += static_cast<int64_t>(calls.size());
            const Json results = env.step(calls).at("results");
            for (size_t k = 0; k < results.size(); ++k) {
                const Json& tool = messages.at(m + 1 + k);
                EXPECT_EQ(tool.at("role"), "tool");
                EXPECT_EQ(tool.at("tool_call_id"), results[k].at("tool_call_id"));
                EXPECT_EQ(tool.at("content"), results[k].at("content"));
                EXPECT_THAT(tool.at("content").get<std::string>(), Not(HasSubstr("error")));
            }
        }
        EXPECT_LE(num_calls, 20);
        EXPECT_EQ(env.verify(row).at("reward"), 1.0);

        const std::string rendered =
            text::join_segments(fmt->render(text::OrderedJson::parse(row.dump()), {.thinking = true}));
        EXPECT_THAT(rendered, HasSubstr("<｜DSML｜invoke name=\"search_hotels\">"));
        EXPECT_EQ(messages.back().at("content"), plan_text(t.solution));
        EXPECT_THAT(rendered, HasSubstr("</think>" + plan_text(t.solution)));
        EXPECT_THAT(rendered, HasSubstr("<function_results>"));
    }
    EXPECT_GT(with_details, 0) << "some task needs get_details";
    EXPECT_THROW(
        {
            Task impossible = Task::from_json(tasks[0]);
            impossible.constraints.budget = 0;
            solver_trajectory(*worlds->find(impossible.env), impossible);
        },
        DataError);
}

TEST(SynthEnvTest, MalformedEnvsFileIsAnErrorNamingFileAndLine) {
    testing::TempDir tmp;
    const std::string good = generate_world("w1", 1).to_json().dump();
    const auto expect_error = [&](const std::string& name, const std::string& content, const std::string& what) {
        const std::string path = tmp.write(name, content);
        try {
            WorldIndex::load(path);
            ADD_FAILURE() << name << " was accepted";
        } catch (const DataError& e) {
            EXPECT_THAT(e.what(), HasSubstr(what)) << name;
        }
    };
    expect_error("a.jsonl", good + "\n{not json\n", "a.jsonl:2: not JSON");
    Json no_price = generate_world("w2", 2).to_json();
    no_price["cities"][1]["hotels"][2].erase("price");
    expect_error("b.jsonl", good + "\n\n" + no_price.dump() + "\n", "b.jsonl:3: world 'w2': city '");
    expect_error("c.jsonl", good + "\n" + no_price.dump() + "\n", "hotels[2]: missing \"price\"");
    expect_error("d.jsonl", good + "\n" + good + "\n", "d.jsonl:2: world id 'w1' appears twice");
    Json twice = generate_world("w3", 3).to_json();
    twice["cities"][0]["restaurants"][1]["id"] = twice["cities"][0]["restaurants"][0]["id"];
    expect_error("e.jsonl", twice.dump() + "\n", "e.jsonl:1: world 'w3'");
    expect_error("f.jsonl", "\n", "f.jsonl: the file holds no world");
    EXPECT_THROW(WorldIndex::load(tmp.path() + "/missing.jsonl"), ConfigError);

    EnvRegistry reg;
    register_builtin_environments(reg);
    EXPECT_THROW(reg.create("synthetic", {{"envs", tmp.path() + "/a.jsonl"}}), DataError);
    const auto index = WorldIndex::load(tmp.write("ok.jsonl", good + "\n"));
    EXPECT_EQ(index->size(), 1u);
    ASSERT_NE(index->find("w1"), nullptr);
    EXPECT_EQ(index->find("w1")->to_json().dump(), good);
}

}  // namespace
}  // namespace dsrl::agent

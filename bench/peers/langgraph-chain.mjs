// bench/peers/langgraph-chain.mjs: the chain of bench/step_overhead in LangGraph (JS), the
// peer framework: N steps, each one call of demo.echo with the output of the step before,
// made through the official MCP TypeScript SDK over stdio to the same troupe-demo-tools, with
// LangGraph's SQLite checkpointer saving the state after every step (its durable mode).
// Also N direct calls from the same client, the baseline LangGraph's overhead is taken from.
//
// usage: node langgraph-chain.mjs STEPS SERVER DATABASE
// prints one line of JSON: {"steps", "direct_seconds", "graph_seconds", "langgraph"}
import { Annotation, END, START, StateGraph } from "@langchain/langgraph";
import { SqliteSaver } from "@langchain/langgraph-checkpoint-sqlite";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { createRequire } from "node:module";

const [steps, server, database] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
if (!(steps > 0) || !server || !database) {
  console.error("usage: node langgraph-chain.mjs STEPS SERVER DATABASE");
  process.exit(2);
}
const client = new Client({ name: "langgraph-chain", version: "1.0.0" });
await client.connect(new StdioClientTransport({ command: server }));

let start = performance.now();
for (let i = 0; i < steps; i++) await client.callTool({ name: "echo", arguments: { message: "x" } });
const direct = (performance.now() - start) / 1000;

const State = Annotation.Root({
  done: Annotation({ reducer: (_, next) => next, default: () => 0 }),
  last: Annotation({ reducer: (_, next) => next, default: () => "x" }),
});
const graph = new StateGraph(State)
  .addNode("call", async (state) => {
    const result = await client.callTool({ name: "echo", arguments: { message: state.last } });
    return { done: state.done + 1, last: result.content[0].text };
  })
  .addEdge(START, "call")
  .addConditionalEdges("call", (state) => (state.done < steps ? "call" : END))
  .compile({ checkpointer: SqliteSaver.fromConnString(database) });
start = performance.now();
const final = await graph.invoke({}, { configurable: { thread_id: "chain" }, recursionLimit: steps + 10 });
const chained = (performance.now() - start) / 1000;
if (final.done !== steps) {
  console.error(`langgraph-chain: ran ${final.done} steps, expected ${steps}`);
  process.exit(1);
}
const langgraph = createRequire(import.meta.url)("@langchain/langgraph/package.json").version;
console.log(JSON.stringify({ steps, direct_seconds: direct, graph_seconds: chained, langgraph }));
await client.close();

// bench/peers/langgraph-fanout.mjs: the for_each of bench/step_overhead in LangGraph (JS): one
// step over ITEMS items, each one call of demo.echo with the item, fanned out with Send (all at
// once, the calls in flight together on one MCP client), through the official MCP TypeScript
// SDK over stdio to the same troupe-demo-tools, with LangGraph's SQLite checkpointer.
//
// usage: node langgraph-fanout.mjs ITEMS SERVER DATABASE
// prints one line of JSON: {"items", "seconds", "langgraph"}
import { Annotation, END, START, Send, StateGraph } from "@langchain/langgraph";
import { SqliteSaver } from "@langchain/langgraph-checkpoint-sqlite";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { createRequire } from "node:module";
import { setMaxListeners } from "node:events";

const [items, server, database] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
if (!(items > 0) || !server || !database) {
  console.error("usage: node langgraph-fanout.mjs ITEMS SERVER DATABASE");
  process.exit(2);
}
setMaxListeners(0); // every call in flight listens on the same signal and socket
const client = new Client({ name: "langgraph-fanout", version: "1.0.0" });
await client.connect(new StdioClientTransport({ command: server }));

const State = Annotation.Root({
  items: Annotation({ reducer: (_, next) => next, default: () => [] }),
  outputs: Annotation({ reducer: (all, more) => all.concat(more), default: () => [] }),
});
const graph = new StateGraph(State)
  .addNode("each", async (state) => {
    const result = await client.callTool({ name: "echo", arguments: { message: String(state.item) } });
    return { outputs: [result.content[0].text] };
  })
  .addConditionalEdges(START, (state) => state.items.map((item) => new Send("each", { item })))
  .addEdge("each", END)
  .compile({ checkpointer: SqliteSaver.fromConnString(database) });
const start = performance.now();
const final = await graph.invoke(
  { items: [...Array(items).keys()] },
  { configurable: { thread_id: "fanout" } },
);
const seconds = (performance.now() - start) / 1000;
if (final.outputs.length !== items) {
  console.error(`langgraph-fanout: ${final.outputs.length} outputs, expected ${items}`);
  process.exit(1);
}
const langgraph = createRequire(import.meta.url)("@langchain/langgraph/package.json").version;
console.log(JSON.stringify({ items, seconds, langgraph }));
await client.close();

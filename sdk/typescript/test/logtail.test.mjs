// client.log.tail: replay and follow against the real server; the stream's last lines, resume
// and closing on break against a fake server that says exactly what the test needs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { Client, LogTailError, PortcullisError } from "../dist/node.js";
import { startServer } from "./support/server.mjs";

const line = (data) => `${JSON.stringify({ id: 1, ok: true, command: "LOG.TAIL", data, error: null })}\n`;
const event = (seq) => ({ seq, time: "2026-12-04T20:00:00.000Z", command: "SYS.INFO", outcome: "ok", actor: "anonymous", subject: null, session: null, client: "127.0.0.1:1", transport: "tcp", duration_us: 1, summary: {}, prev: "0".repeat(64), hash: "1".repeat(64) });
const unavailable = (reason, resume) =>
  `${JSON.stringify({ id: 1, ok: false, command: "LOG.TAIL", data: null, error: { code: "UNAVAILABLE", message: "stream ended", details: { reason, resume_from_seq: resume } } })}\n`;

/** A fake server: `script(request, socket, n)` answers the n-th connection's LOG.TAIL request. */
async function fake(script) {
  const requests = [];
  const closed = [];
  let n = 0;
  const server = createServer((socket) => {
    const index = n++;
    let buffer = "";
    socket.setEncoding("utf8");
    socket.on("error", () => {});
    socket.on("close", () => closed.push(index));
    socket.on("data", (chunk) => {
      buffer += chunk;
      const nl = buffer.indexOf("\n");
      if (nl === -1) return;
      const request = JSON.parse(buffer.slice(0, nl));
      requests.push(request);
      script(request, socket, index);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { port: server.address().port, requests, closed, close: () => new Promise((r) => server.close(r)) };
}

test("a tail without follow replays the log and ends on its last line", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ tcp: server.tcp, token: server.operatorToken });
  t.after(() => client.close());
  await client.execute("SYS.INFO");
  await client.execute("NOPE.NOPE").catch(() => {});
  const seen = [];
  for await (const e of client.log.tail({ fromSeq: 1 })) seen.push([e.seq, e.command]);
  assert.deepEqual(seen, [
    [1, "SYS.INFO"],
    [2, "NOPE.NOPE"],
  ]);
});

test("a following tail yields live events; breaking out closes its connection", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ tcp: server.tcp, token: server.operatorToken });
  t.after(() => client.close());
  let caughtUp;
  const seen = [];
  for await (const e of client.log.tail({ fromSeq: 1, follow: true, onCaughtUp: (n) => (caughtUp = n) })) {
    seen.push(e.command);
    // The tail's own event (1) comes first; then make two more.
    if (seen.length === 1) {
      await client.execute("SYS.INFO");
      await client.execute("SYS.COMMANDS");
    }
    if (seen.length === 3) break;
  }
  assert.deepEqual(seen, ["LOG.TAIL", "SYS.INFO", "SYS.COMMANDS"]);
  assert.equal(typeof caughtUp, "number");

  // Against the fake: the server side sees the close when the loop is left.
  const f = await fake((_, socket) => socket.write(line({ caught_up: true, next_seq: 1 }) + line({ event: event(1) })));
  t.after(() => f.close());
  const other = new Client({ tcp: { port: f.port }, token: "pco_x" });
  for await (const e of other.log.tail({ follow: true })) {
    assert.equal(e.seq, 1);
    break;
  }
  for (let i = 0; i < 100 && f.closed.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(f.closed, [0]);
  assert.deepEqual(f.requests[0], { id: 1, command: "LOG.TAIL", params: { follow: true }, token: "pco_x" });
});

test("a stream that ends early throws a LogTailError with resumeFromSeq", async (t) => {
  const f = await fake((_, socket) => socket.end(line({ event: event(1) }) + line({ event: event(2) }) + unavailable("lagged", 3)));
  t.after(() => f.close());
  const client = new Client({ tcp: { port: f.port }, token: "pco_x" });
  const seen = [];
  await assert.rejects(
    (async () => {
      for await (const e of client.log.tail({ fromSeq: 1, follow: true })) seen.push(e.seq);
    })(),
    (e) => e instanceof LogTailError && e.code === "UNAVAILABLE" && e.reason === "lagged" && e.resumeFromSeq === 3,
  );
  assert.deepEqual(seen, [1, 2]);
});

test("with resume, the tail continues from resume_from_seq on a new connection, without gap or duplicate", async (t) => {
  const f = await fake((request, socket, n) => {
    if (n === 0) socket.end(line({ event: event(1) }) + line({ event: event(2) }) + unavailable("shutdown", 3));
    else if (n === 1) socket.end(line({ event: event(3) }));
    else socket.end(line({ event: event(request.params.from_seq) }) + line({ end: true, next_seq: request.params.from_seq + 1 }));
  });
  t.after(() => f.close());
  const client = new Client({ tcp: { port: f.port }, token: "pco_x" });
  const seen = [];
  for await (const e of client.log.tail({ fromSeq: 1, resume: true })) seen.push(e.seq);
  assert.deepEqual(seen, [1, 2, 3, 4]);
  // The second connection resumed from the server's resume_from_seq; the third (after a bare
  // close) from the seq after the last event received.
  assert.deepEqual(
    f.requests.map((r) => r.params.from_seq),
    [1, 3, 4],
  );
});

test("a bare close mid-stream is CLIENT_CLOSED with the next seq to resume from; a refused tail throws at once", async (t) => {
  const f = await fake((_, socket) => socket.end(line({ event: event(7) })));
  t.after(() => f.close());
  const client = new Client({ tcp: { port: f.port }, token: "pco_x" });
  await assert.rejects(
    (async () => {
      for await (const _ of client.log.tail({ fromSeq: 7, follow: true }));
    })(),
    (e) => e instanceof LogTailError && e.code === "CLIENT_CLOSED" && e.resumeFromSeq === 8,
  );

  const server = await startServer();
  t.after(() => server.stop());
  const anonymous = new Client({ tcp: server.tcp });
  t.after(() => anonymous.close());
  await assert.rejects(
    (async () => {
      for await (const _ of anonymous.log.tail({ follow: true, resume: true }));
    })(),
    (e) => e instanceof PortcullisError && e.code === "UNAUTHENTICATED" && e.resumeFromSeq === undefined,
  );
});

test("a server shutdown ends a following tail with a resumable error", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ tcp: server.tcp, token: server.operatorToken });
  t.after(() => client.close());
  const seen = [];
  const done = (async () => {
    for await (const e of client.log.tail({ fromSeq: 1, follow: true })) {
      seen.push(e.seq);
      if (seen.length === 1) server.child.kill("SIGTERM");
    }
  })();
  // The documented last line (UNAVAILABLE, reason shutdown), never a bare close: the error
  // says why and where to resume.
  await assert.rejects(
    done,
    (e) => e instanceof LogTailError && e.code === "UNAVAILABLE" && e.reason === "shutdown" && e.resumeFromSeq === seen.at(-1) + 1,
  );
});

// NDJSON over TCP: pipelining against the real server, and the failure cases against small fake
// servers that misbehave on purpose (so each case is certain, not a race).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { Client, PortcullisError, TcpTransport, backoffDelay } from "../dist/node.js";
import { startServer } from "./support/server.mjs";

/** A TCP server on loopback whose connections `onConnection` handles. */
async function fakeServer(onConnection) {
  const sockets = new Set();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    onConnection(socket);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    sockets,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Calls each `\n`-terminated request line the peer sends. */
function onRequests(socket, handle) {
  let buffer = "";
  socket.setEncoding("utf8");
  socket.on("data", (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf("\n")) !== -1) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      handle(JSON.parse(line));
    }
  });
}

const pong = (id) => `${JSON.stringify({ id, ok: true, command: "SYS.PING", data: { pong: true }, error: null })}\n`;

test("1,000 pipelined calls on one connection are all answered, in order, ids matched", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ tcp: server.tcp });
  t.after(() => client.close());
  const connections = new Set();
  const calls = [];
  for (let i = 0; i < 1000; i++) {
    calls.push(client.execute(i % 2 === 0 ? "SYS.PING" : "NOPE.NOPE").then(
      (data) => ({ i, data }),
      (error) => ({ i, error }),
    ));
  }
  assert.ok(client.transport.inFlight <= 1000);
  const results = await Promise.all(calls);
  for (const r of results) {
    if (r.i % 2 === 0) assert.deepEqual(r.data, { pong: true }, `call ${r.i}`);
    else assert.ok(r.error instanceof PortcullisError && r.error.code === "UNKNOWN_COMMAND", `call ${r.i}`);
  }
  // All of them went over one connection: the server saw one TCP client address for the logged ones.
  const log = await client.execute("LOG.QUERY", { command: "NOPE.NOPE", limit: 1000 }, { token: server.operatorToken });
  assert.equal(log.events.length, 500);
  for (const e of log.events) connections.add(e.client);
  assert.equal(connections.size, 1, "one connection carried every call");
});

test("an oversized request gets FRAME_TOO_LARGE; the calls after it CLIENT_CLOSED; a streaming command is refused", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ tcp: server.tcp });
  t.after(() => client.close());
  const settled = Promise.allSettled([
    client.execute("SYS.PING"),
    client.execute("SYS.PING", { pad: "x".repeat(70_000) }),
    client.execute("SYS.PING"),
  ]);
  const [first, big, after] = await settled;
  assert.deepEqual(first, { status: "fulfilled", value: { pong: true } });
  assert.ok(big.status === "rejected" && big.reason.code === "FRAME_TOO_LARGE", String(big.reason));
  assert.ok(after.status === "rejected" && after.reason.code === "CLIENT_CLOSED", String(after.reason));
  // The next call reconnects.
  assert.deepEqual(await client.execute("SYS.PING"), { pong: true });
  await assert.rejects(client.execute("LOG.TAIL", { follow: true }), (e) => e instanceof TypeError && /log\.tail/.test(e.message));
});

test("answers are matched to calls by order and their ids are checked", async (t) => {
  // The fake answers the second request with the first one's id.
  const fake = await fakeServer((socket) => {
    const ids = [];
    onRequests(socket, (req) => {
      ids.push(req.id);
      if (ids.length === 2) socket.write(pong(ids[0]) + pong(ids[0]));
    });
  });
  t.after(() => fake.close());
  const client = new Client({ tcp: { port: fake.port } });
  t.after(() => client.close());
  const first = client.execute("SYS.PING");
  const second = client.execute("SYS.PING");
  assert.deepEqual(await first, { pong: true });
  await assert.rejects(second, (e) => e instanceof PortcullisError && e.code === "CLIENT_PROTOCOL");
});

test("a connection closed mid-call rejects every call in flight with CLIENT_CLOSED, never retried", async (t) => {
  let received = 0;
  const fake = await fakeServer((socket) => {
    onRequests(socket, () => {
      received++;
      if (received === 3) socket.destroy();
    });
  });
  t.after(() => fake.close());
  const client = new Client({ tcp: { port: fake.port } });
  t.after(() => client.close());
  const calls = [client.execute("SYS.PING"), client.execute("SYS.PING"), client.execute("SYS.PING")];
  for (const r of await Promise.allSettled(calls)) {
    assert.equal(r.status, "rejected");
    assert.ok(r.reason instanceof PortcullisError && r.reason.code === "CLIENT_CLOSED" && /may have run/.test(r.reason.message), String(r.reason));
  }
  // Nothing was sent again on a new connection.
  assert.equal(received, 3);
});

test("the server killed (SIGKILL) mid-call: the calls in flight reject with CLIENT_CLOSED", async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const client = new Client({ tcp: server.tcp });
  t.after(() => client.close());
  assert.deepEqual(await client.execute("SYS.PING"), { pong: true });
  // Frozen, the server answers nothing: the calls are certainly in flight when it dies.
  await server.kill("SIGSTOP");
  const settled = Promise.allSettled(Array.from({ length: 5 }, () => client.execute("SYS.INFO")));
  await new Promise((r) => setTimeout(r, 50));
  await server.kill("SIGKILL");
  for (const r of await settled) {
    assert.equal(r.status, "rejected");
    assert.ok(r.reason instanceof PortcullisError && r.reason.code === "CLIENT_CLOSED", String(r.reason));
  }
});

test("after a server restart, new calls reconnect", async (t) => {
  const first = await startServer();
  const address = `${first.tcp.host}:${first.tcp.port}`;
  const client = new Client({ tcp: { ...first.tcp, reconnect: { attempts: 20, initialDelayMs: 50, maxDelayMs: 500 } } });
  t.after(() => client.close());
  assert.deepEqual(await client.execute("SYS.PING"), { pong: true });
  await first.kill("SIGKILL");
  // While the server is down, a call fails with CLIENT_TRANSPORT after its attempts (not hangs).
  const down = new Client({ tcp: { ...first.tcp, reconnect: { attempts: 2, initialDelayMs: 10 } } });
  await assert.rejects(down.execute("SYS.PING"), (e) => e instanceof PortcullisError && e.code === "CLIENT_TRANSPORT");
  await down.close();
  const second = await startServer({ dir: first.dir, tcp: address });
  t.after(() => second.stop());
  assert.deepEqual(await client.execute("SYS.PING"), { pong: true });
  const info = await client.execute("SYS.INFO");
  assert.equal(info.name, "portcullis");
});

test("the connection-cap line (UNAVAILABLE, id null) fails the calls with UNAVAILABLE", async (t) => {
  const fake = await fakeServer((socket) => {
    socket.end(`${JSON.stringify({ id: null, ok: false, command: null, data: null, error: { code: "UNAVAILABLE", message: "too many connections" } })}\n`);
  });
  t.after(() => fake.close());
  const client = new Client({ tcp: { port: fake.port, reconnect: { attempts: 1 } } });
  t.after(() => client.close());
  const calls = [client.execute("SYS.PING"), client.execute("SYS.PING")];
  for (const r of await Promise.allSettled(calls)) {
    assert.equal(r.status, "rejected");
    assert.ok(r.reason instanceof PortcullisError && r.reason.code === "UNAVAILABLE" && r.reason.message === "too many connections", String(r.reason));
  }
});

test("an answer line over the limit is an error, not unbounded memory", async (t) => {
  const fake = await fakeServer((socket) => {
    onRequests(socket, () => {
      // 64 KiB of a line that never ends, then more: the client must give up at its limit.
      const chunk = "x".repeat(65536);
      for (let i = 0; i < 4; i++) socket.write(chunk);
    });
  });
  t.after(() => fake.close());
  const client = new Client({ tcp: { port: fake.port, maxLineBytes: 100_000 } });
  t.after(() => client.close());
  await assert.rejects(client.execute("SYS.PING"), (e) => e instanceof PortcullisError && e.code === "CLIENT_PROTOCOL" && /exceeds 100000 bytes/.test(e.message));
});

test("a line split across packets and CRLF line ends are read", async (t) => {
  const fake = await fakeServer((socket) => {
    onRequests(socket, (req) => {
      const line = pong(req.id).replace("\n", "\r\n");
      socket.write(line.slice(0, 7));
      setTimeout(() => socket.write(line.slice(7)), 20);
    });
  });
  t.after(() => fake.close());
  const client = new Client({ tcp: { port: fake.port } });
  t.after(() => client.close());
  assert.deepEqual(await client.execute("SYS.PING"), { pong: true });
});

test("closing the client rejects the calls in flight with CLIENT_CLOSED", async (t) => {
  const fake = await fakeServer(() => {});
  t.after(() => fake.close());
  const transport = new TcpTransport({ port: fake.port });
  const client = new Client({ transport });
  const call = client.execute("SYS.PING");
  await new Promise((r) => setTimeout(r, 20));
  await client.close();
  await assert.rejects(call, (e) => e instanceof PortcullisError && e.code === "CLIENT_CLOSED");
  await assert.rejects(client.execute("SYS.PING"), (e) => e.code === "CLIENT_CLOSED");
});

test("backoff grows exponentially with jitter, capped", () => {
  assert.equal(backoffDelay(0, 100, 5000), 0);
  assert.equal(backoffDelay(1, 100, 5000, () => 0), 50);
  assert.equal(backoffDelay(1, 100, 5000, () => 1), 100);
  assert.equal(backoffDelay(3, 100, 5000, () => 1), 400);
  assert.equal(backoffDelay(3, 100, 5000, () => 0), 200);
  assert.equal(backoffDelay(20, 100, 5000, () => 1), 5000);
  assert.equal(backoffDelay(20, 100, 5000, () => 0), 2500);
});

test("at most maxInFlight calls are written; the rest wait in the client and go out in order", async (t) => {
  // The server reads every line but answers only when released, so the calls stay in flight.
  const held = [];
  let release = null;
  const released = new Promise((resolve) => {
    release = resolve;
  });
  const fake = await fakeServer((socket) => {
    let buffered = "";
    socket.setEncoding("utf8");
    socket.on("data", async (chunk) => {
      buffered += chunk;
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) held.push(JSON.parse(line).id);
      await released;
      for (const id of held.splice(0)) {
        socket.write(`${JSON.stringify({ id, ok: true, command: "SYS.PING", data: { n: id }, error: null })}\n`);
      }
    });
  });
  t.after(() => fake.close());
  const transport = new TcpTransport({ port: fake.port, maxInFlight: 4 });
  const client = new Client({ transport });
  t.after(() => client.close());
  const calls = Array.from({ length: 10 }, () => client.execute("SYS.PING"));
  for (let i = 0; i < 200 && held.length < 4; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(transport.inFlight, 4, "four calls written");
  assert.equal(transport.queued, 6, "six calls wait for a slot");
  assert.equal(held.length, 4, "the server has read exactly four requests");
  release();
  const answers = await Promise.all(calls);
  assert.deepEqual(
    answers.map((a) => a.n),
    Array.from({ length: 10 }, (_, i) => i + 1),
    "every call answered, in call order",
  );
  assert.equal(transport.inFlight, 0);
  assert.equal(transport.queued, 0);
});

// Starts the real `portcullis serve` on loopback with a fresh data directory, as the Rust
// black-box harness does. The binary is $PORTCULLIS_BIN, else the workspace's debug build.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("../../../../", import.meta.url));
export const BIN = process.env.PORTCULLIS_BIN ?? join(repo, "target/debug/portcullis");

/**
 * Starts a server. `config` is TOML text written to portcullis.toml; `args` are extra flags;
 * `dir` reuses the directory of an earlier server (a restart), `tcp` / `http` fix the listen
 * addresses (default `127.0.0.1:0`).
 * Resolves to { tcp: {host, port}, httpUrl, dataDir, dir, operatorToken, outbox, stop(), kill() }.
 */
export async function startServer({ config = "", args = [], dir: reuse, tcp = "127.0.0.1:0", http = "127.0.0.1:0" } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`no server binary at ${BIN}: build it (cargo build) or set PORTCULLIS_BIN`);
  }
  const dir = reuse ?? mkdtempSync(join(tmpdir(), "portcullis-sdk-"));
  const dataDir = join(dir, "data");
  const configPath = join(dir, "portcullis.toml");
  writeFileSync(configPath, config);
  const child = spawn(
    BIN,
    ["serve", "--config", configPath, "--data-dir", dataDir, "--tcp", tcp, "--http", http, ...args],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-20000);
  });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const line = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.once("line", (l) => resolve(l));
    exited.then((e) => reject(new Error(`server exited before listening (${JSON.stringify(e)}):\n${stderr}`)));
  });
  const field = (name) => {
    const word = line.split(/\s+/).find((w) => w.startsWith(`${name}=`));
    if (word === undefined) throw new Error(`no ${name}= in ${JSON.stringify(line)}`);
    return word.slice(name.length + 1);
  };
  const tcpAddr = field("tcp");
  const httpAddr = field("http");
  const colon = tcpAddr.lastIndexOf(":");
  const operatorToken = readFileSync(join(dataDir, "operator.token"), "utf8").trim();
  let stopped = false;
  return {
    tcp: { host: tcpAddr.slice(0, colon), port: Number(tcpAddr.slice(colon + 1)) },
    httpUrl: `http://${httpAddr}`,
    dataDir,
    dir,
    outbox: join(dataDir, "outbox"),
    operatorToken,
    child,
    exited,
    stderr: () => stderr,
    /** SIGTERM, wait for the exit, remove the directory (unless `keep`, for a restart). */
    async stop({ keep = false } = {}) {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
      if (!keep) rmSync(dir, { recursive: true, force: true });
    },
    /** Sends `signal` (e.g. SIGKILL) and waits for the exit; the directory stays. */
    async kill(signal = "SIGKILL") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      if (signal === "SIGKILL" || signal === "SIGTERM") await exited;
    },
  };
}

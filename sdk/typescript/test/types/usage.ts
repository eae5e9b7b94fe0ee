// Compiled with `tsc --noEmit -p test/types` by test/generate.test.mjs: the calls below must
// type-check, and every line marked `@ts-expect-error` must be a type error (tsc fails on an
// unused directive), so wrong params, a wrong result use or a misspelt command cannot compile.
import { Client, MfaRequiredError, PortcullisError } from "../../src/node.js";
import type { ErrorCode, ParamsOf, ResultOf } from "../../src/node.js";

export async function usage(client: Client): Promise<void> {
  const pair = await client.execute("AUTH.LOGIN", { email: "a@example.com", password: "pw" });
  const access: string = pair.access_token;
  const seconds: number = pair.expires_in;
  void access;
  void seconds;

  // A command without required params may leave them out.
  const pong = await client.execute("SYS.PING");
  const yes: boolean = pong.pong;
  void yes;

  // @ts-expect-error: a required member is missing.
  await client.execute("AUTH.LOGIN", { email: "a@example.com" });
  // @ts-expect-error: a member of the wrong type.
  await client.execute("AUTH.LOGIN", { email: "a@example.com", password: 42 });
  // @ts-expect-error: a member the command does not define.
  await client.execute("AUTH.LOGIN", { email: "a@example.com", password: "pw", remember: true });
  // @ts-expect-error: params are required for AUTH.LOGIN.
  await client.execute("AUTH.LOGIN");
  // @ts-expect-error: SYS.PING takes no params.
  await client.execute("SYS.PING", { x: 1 });
  // @ts-expect-error: the result has no such member.
  void pair.no_such_member;
  // @ts-expect-error: an enum of the protocol.
  await client.execute("MFA.VERIFY", { method: "sms", code: "123456" });

  // A command newer than the SDK is accepted untyped.
  const future: unknown = await client.execute("FUTURE.COMMAND", { anything: 1 });
  void future;

  try {
    await client.execute("AUTH.REFRESH", { refresh_token: "prt_x" }, { token: null });
  } catch (error) {
    if (error instanceof MfaRequiredError) {
      const methods: readonly ("totp" | "recovery_code" | "passkey")[] = error.methods;
      void methods;
      await client.mfa.verify(error, { method: "totp", code: "123456" });
      // @ts-expect-error: a passkey answer needs its ceremony.
      await client.mfa.verify(error, { method: "passkey" });
    } else if (error instanceof PortcullisError) {
      const code: ErrorCode | "CLIENT_CLOSED" | "CLIENT_TRANSPORT" | "CLIENT_PROTOCOL" = error.code;
      // @ts-expect-error: codes are a closed set.
      const wrong: typeof error.code = "NOT_A_CODE";
      void code;
      void wrong;
    }
  }

  const params: ParamsOf<"AUTH.REFRESH"> = { refresh_token: "prt_x" };
  const result: ResultOf<"AUTH.REFRESH"> | undefined = undefined;
  void params;
  void result;
  for await (const event of client.log.tail({ fromSeq: 1 })) {
    const seq: number = event.seq;
    void seq;
  }
}

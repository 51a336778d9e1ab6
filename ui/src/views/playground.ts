import { ApiError, errorMessage, isRecord, json, request } from "../api";
import { type Context, mayCall } from "../context";
import { field, h, replace } from "../dom";
import { ms, num } from "../format";
import { sseData } from "../sse";
import type { ListOf, ModelCard } from "../types";
import { ErrorLine, viewHeader } from "./common";

interface ToolCall {
  id?: string;
  type: "function";
  function: { name: string; arguments: string };
}

interface Message {
  role: "system" | "user" | "assistant";
  content: string | null;
  tool_calls?: ToolCall[];
}

type Status = "idle" | "streaming" | "done" | "stopped" | "error";

/** Chat with any model the caller may use, streamed token by token (fetch + SSE). */
export function playgroundView({ me, scope, query }: Context): HTMLElement {
  const errors = new ErrorLine();
  const history: Message[] = [];
  let controller: AbortController | null = null;

  const model = h("select", { testid: "playground-model", attrs: { name: "model", required: true } });
  const system = h("textarea", { testid: "playground-system", attrs: { rows: 3, placeholder: "You are a helpful assistant." } });
  const temperature = h("input", { testid: "playground-temperature", attrs: { type: "number", min: 0, max: 2, step: 0.1, value: "0.7" } });
  const topP = h("input", { testid: "playground-top-p", attrs: { type: "number", min: 0, max: 1, step: 0.05, value: "1" } });
  const maxTokens = h("input", { testid: "playground-max-tokens", attrs: { type: "number", min: 1, step: 1, value: "256" } });
  const stream = h("input", { testid: "playground-stream", attrs: { type: "checkbox", checked: true } });
  const jsonMode = h("input", { testid: "playground-json", attrs: { type: "checkbox" } });
  const tools = h("textarea", {
    testid: "playground-tools",
    class: "mono",
    attrs: { rows: 5, spellcheck: "false", placeholder: '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]' },
  });
  const conversation = h("div", { class: "conversation", testid: "playground-conversation", attrs: { "aria-live": "polite" } });
  const input = h("textarea", { testid: "playground-input", attrs: { rows: 3, placeholder: "Write a message (Ctrl+Enter sends)" } });
  const send = h("button", { testid: "playground-send", attrs: { type: "submit" } }, "Send");
  const stop = h("button", { class: "secondary", testid: "playground-stop", attrs: { type: "button", disabled: true }, on: { click: () => controller?.abort() } }, "Stop");
  const clear = h("button", {
    class: "secondary",
    testid: "playground-clear",
    attrs: { type: "button" },
    on: {
      click: () => {
        history.length = 0;
        replace(conversation);
        setStatus("idle");
      },
    },
  }, "Clear");
  const status = h("span", { class: "status", testid: "playground-status" });
  const meta = h("div", { class: "meta muted", testid: "playground-meta" });

  const setStatus = (value: Status, detail = ""): void => {
    status.dataset.status = value;
    replace(status, detail === "" ? value : `${value}: ${detail}`);
    const busy = value === "streaming";
    send.disabled = busy || !mayCall(me);
    stop.disabled = !busy;
  };
  setStatus("idle");

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  const form = h(
    "form",
    {
      class: "composer",
      testid: "playground-form",
      on: {
        submit: (event) => {
          event.preventDefault();
          void sendMessage();
        },
      },
    },
    input,
    h("div", { class: "row" }, send, stop, clear, status),
  );

  async function loadModels(): Promise<void> {
    try {
      const list = await json<ListOf<ModelCard>>("/v1/models", { signal: scope.signal });
      const wanted = query.get("model");
      replace(
        model,
        list.data.map((card) =>
          h("option", { attrs: { value: card.id, selected: card.id === wanted } }, card.kind === "group" ? `${card.id} (group)` : card.id),
        ),
      );
      model.dataset.loaded = String(list.data.length);
      if (list.data.length === 0) errors.show("No model", "no model is available to you");
    } catch (error) {
      if (scope.alive) errors.show("Could not list the models", error);
    }
  }
  void loadModels();

  function parseTools(): unknown[] | null {
    const text = tools.value.trim();
    if (text === "") return null;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      throw new Error(`Tools must be JSON: ${errorMessage(error)}`);
    }
    if (!Array.isArray(parsed)) throw new Error("Tools must be a JSON array of tool definitions.");
    return parsed;
  }

  function bubble(role: string, text: string): { el: HTMLElement; body: HTMLElement } {
    const body = h("div", { class: "bubble-body" }, text);
    const el = h("div", { class: `bubble ${role}`, dataset: { role } }, h("div", { class: "bubble-role" }, role), body);
    conversation.append(el);
    el.scrollIntoView({ block: "end" });
    return { el, body };
  }

  async function sendMessage(): Promise<void> {
    errors.clear();
    const content = input.value.trim();
    if (content === "" || model.value === "") return;
    let toolList: unknown[] | null;
    try {
      toolList = parseTools();
    } catch (error) {
      errors.show("Invalid tools", error);
      return;
    }
    const streaming = stream.checked;
    const body: Record<string, unknown> = {
      model: model.value,
      messages: [
        ...(system.value.trim() === "" ? [] : [{ role: "system", content: system.value }]),
        ...history,
        { role: "user", content },
      ],
      stream: streaming,
    };
    const numberOf = (el: HTMLInputElement): number | null => (el.value.trim() === "" ? null : Number(el.value));
    const t = numberOf(temperature);
    const p = numberOf(topP);
    const m = numberOf(maxTokens);
    if (t !== null) body.temperature = t;
    if (p !== null) body.top_p = p;
    if (m !== null) body.max_tokens = Math.trunc(m);
    if (jsonMode.checked) body.response_format = { type: "json_object" };
    if (toolList !== null) body.tools = toolList;
    if (streaming) body.stream_options = { include_usage: true };

    history.push({ role: "user", content });
    bubble("user", content);
    input.value = "";
    const reply = bubble("assistant", "");
    const output = document.createTextNode("");
    reply.body.append(output);
    reply.body.setAttribute("data-testid", "playground-output");
    for (const old of conversation.querySelectorAll("[data-testid='playground-output']")) {
      if (old !== reply.body) old.removeAttribute("data-testid");
    }
    const calls = new Map<number, ToolCall>();
    const callsView = h("pre", { class: "tool-calls", testid: "playground-tool-calls", attrs: { hidden: true } });
    reply.el.append(callsView);
    const showCalls = (): void => {
      callsView.hidden = calls.size === 0;
      replace(callsView, JSON.stringify([...calls.values()], null, 2));
    };

    controller = new AbortController();
    const stopOnLeave = (): void => controller?.abort();
    scope.onDispose(stopOnLeave);
    setStatus("streaming");
    replace(meta);
    const started = performance.now();
    let firstToken: number | null = null;
    let chunks = 0;
    let finish: string | null = null;
    let usage: Record<string, unknown> | null = null;
    try {
      const response = await request("/v1/chat/completions", {
        method: "POST",
        body,
        signal: controller.signal,
        headers: { Accept: streaming ? "text/event-stream" : "application/json" },
      });
      if (!response.ok) throw await ApiError.from(response);
      const routed = {
        target: response.headers.get("x-helixflow-target"),
        reason: response.headers.get("x-helixflow-route-reason"),
        requestId: response.headers.get("x-request-id"),
      };
      const appendText = (text: string): void => {
        if (text === "") return;
        firstToken ??= performance.now();
        chunks += 1;
        output.appendData(text);
        reply.body.dataset.chunks = String(chunks);
      };
      if (streaming && response.body !== null) {
        for await (const data of sseData(response.body)) {
          let event: unknown;
          try {
            event = JSON.parse(data);
          } catch {
            continue;
          }
          if (!isRecord(event)) continue;
          if (isRecord(event.error)) {
            throw new ApiError(0, typeof event.error.message === "string" ? event.error.message : "stream error");
          }
          if (isRecord(event.usage)) usage = event.usage;
          const choices = Array.isArray(event.choices) ? event.choices : [];
          const choice: unknown = choices[0];
          if (!isRecord(choice)) continue;
          if (typeof choice.finish_reason === "string") finish = choice.finish_reason;
          const delta = choice.delta;
          if (!isRecord(delta)) continue;
          if (typeof delta.content === "string") appendText(delta.content);
          if (Array.isArray(delta.tool_calls)) {
            for (const part of delta.tool_calls) mergeToolCall(calls, part);
            showCalls();
          }
        }
      } else {
        const reply: unknown = await response.json();
        const choice: unknown = isRecord(reply) && Array.isArray(reply.choices) ? reply.choices[0] : null;
        if (isRecord(reply) && isRecord(reply.usage)) usage = reply.usage;
        if (isRecord(choice)) {
          if (typeof choice.finish_reason === "string") finish = choice.finish_reason;
          const message = choice.message;
          if (isRecord(message)) {
            if (typeof message.content === "string") appendText(message.content);
            if (Array.isArray(message.tool_calls)) {
              message.tool_calls.forEach((call: unknown, index: number) => {
                if (isRecord(call)) mergeToolCall(calls, { ...call, index });
              });
              showCalls();
            }
          }
        }
      }
      const message: Message = { role: "assistant", content: output.data === "" && calls.size > 0 ? null : output.data };
      if (calls.size > 0) message.tool_calls = [...calls.values()];
      history.push(message);
      setStatus("done", finish ?? "");
      showMeta(meta, routed, started, firstToken, chunks, usage);
    } catch (error) {
      if (controller.signal.aborted) {
        setStatus("stopped");
        if (output.data !== "") history.push({ role: "assistant", content: output.data });
      } else {
        setStatus("error");
        reply.el.classList.add("failed");
        errors.show("The request failed", error);
      }
    } finally {
      controller = null;
    }
  }

  const settings = h(
    "div",
    { class: "card settings-panel" },
    field("Model", model),
    field("System prompt", system),
    h("div", { class: "row" }, field("Temperature", temperature), field("top_p", topP), field("max_tokens", maxTokens)),
    h("label", { class: "check" }, stream, "Stream tokens as they are generated"),
    h("label", { class: "check" }, jsonMode, "JSON mode (response_format: json_object)"),
    field("Tools (JSON array, optional)", tools),
  );
  return h(
    "div",
    { class: "view", testid: "view-playground" },
    viewHeader("Playground"),
    mayCall(me) ? null : h("div", { class: "notice" }, `Your role (${me.role}) may read but not call the models.`),
    errors.el,
    h("div", { class: "playground" }, settings, h("div", { class: "card chat" }, conversation, meta, form)),
  );
}

function mergeToolCall(calls: Map<number, ToolCall>, part: unknown): void {
  if (!isRecord(part)) return;
  const index = typeof part.index === "number" ? part.index : calls.size;
  const call = calls.get(index) ?? { type: "function", function: { name: "", arguments: "" } };
  if (typeof part.id === "string") call.id = part.id;
  const fn = part.function;
  if (isRecord(fn)) {
    if (typeof fn.name === "string") call.function.name += fn.name;
    if (typeof fn.arguments === "string") call.function.arguments += fn.arguments;
  }
  calls.set(index, call);
}

function showMeta(
  meta: HTMLElement,
  routed: { target: string | null; reason: string | null; requestId: string | null },
  started: number,
  firstToken: number | null,
  chunks: number,
  usage: Record<string, unknown> | null,
): void {
  const ended = performance.now();
  const parts: string[] = [];
  if (routed.target !== null) parts.push(`target ${routed.target}`);
  if (routed.reason !== null) parts.push(`reason: ${routed.reason}`);
  if (firstToken !== null) parts.push(`first token ${ms(firstToken - started)}`);
  parts.push(`total ${ms(ended - started)}`);
  const completion = usage !== null && typeof usage.completion_tokens === "number" ? usage.completion_tokens : null;
  if (usage !== null) {
    parts.push(`tokens ${num(usage.prompt_tokens as number)} in / ${num(completion)} out`);
  }
  if (firstToken !== null && ended - firstToken > 0) {
    const produced = completion ?? chunks;
    parts.push(`${((produced / (ended - firstToken)) * 1000).toFixed(1)} tokens/s`);
  }
  if (routed.requestId !== null) parts.push(`request ${routed.requestId}`);
  replace(meta, parts.join(" · "));
}

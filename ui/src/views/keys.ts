import { json, withQuery } from "../api";
import { type Context, isAdmin, mayCall } from "../context";
import { badge, field, h, replace, section, table } from "../dom";
import { num, usd, when } from "../format";
import type { AuditItem, KeyCreated, KeyItem, ListOf, Ranged, Role, UserItem } from "../types";
import { ErrorLine, jsonDetails, viewHeader } from "./common";

const ROLES: Role[] = ["viewer", "developer", "admin"];
const PERIODS = ["day", "week", "month", "total"];

/** API keys (create: shown once; list; revoke), users and the audit log (admins). */
export function keysView({ me, scope }: Context): HTMLElement {
  const admin = isAdmin(me);
  const parts: HTMLElement[] = [];
  if (me.kind === "anonymous") {
    parts.push(
      h(
        "p",
        { class: "notice", testid: "auth-off-notice" },
        "Authentication is off (no user or key exists yet). Creating the first key or user turns it on: " +
          "every request, this dashboard's included, then needs a credential. Create an admin user with a " +
          "password first (or start the server with HELIXFLOW_ADMIN_PASSWORD), so that you can sign in.",
      ),
    );
  }
  if (mayCall(me)) parts.push(keysSection(admin, scope.signal));
  else parts.push(h("div", { class: "notice" }, `Your role (${me.role}) has no API keys to manage.`));
  if (admin) {
    parts.push(usersSection(scope.signal), auditSection(scope.signal));
  }
  return h("div", { class: "view", testid: "view-keys" }, viewHeader("Keys & users"), ...parts);
}

function optionalNumber(input: HTMLInputElement): number | undefined {
  const value = input.value.trim();
  return value === "" ? undefined : Number(value);
}

function keysSection(admin: boolean, signal: AbortSignal): HTMLElement {
  const errors = new ErrorLine();
  const list = h("div", { testid: "keys-list" });
  const created = h("div", { class: "created-key", testid: "created-key-panel", attrs: { hidden: true, role: "status" } });
  const pending = new Set<string>();

  const name = h("input", { testid: "key-name", attrs: { name: "name", required: true, maxlength: 128, placeholder: "what it is for" } });
  const models = h("input", { testid: "key-models", title: "Comma-separated model ids, aliases or groups; empty: every model", attrs: { name: "models", placeholder: "every model (or: a, b, group)" } });
  const rpm = h("input", { testid: "key-rpm", attrs: { name: "rpm", type: "number", min: 1 } });
  const tpm = h("input", { testid: "key-tpm", attrs: { name: "tpm", type: "number", min: 1 } });
  const parallel = h("input", { testid: "key-parallel", attrs: { name: "max_parallel", type: "number", min: 1 } });
  const budget = h("input", { testid: "key-budget", attrs: { name: "budget_usd", type: "number", min: 0, step: "0.01" } });
  const period = h("select", { testid: "key-period", attrs: { name: "budget_period" } }, PERIODS.map((p) => h("option", { attrs: { value: p, selected: p === "month" } }, p)));
  const expires = h("input", { testid: "key-expires", attrs: { name: "expires_in_days", type: "number", min: 1, max: 3650, placeholder: "never" } });
  const role = h("select", { testid: "key-role", attrs: { name: "role" } }, h("option", { attrs: { value: "" } }, "default"), ROLES.map((r) => h("option", { attrs: { value: r } }, r)));
  const owner = h("input", { testid: "key-owner", attrs: { name: "owner", placeholder: "me" } });
  const submit = h("button", { testid: "key-create", attrs: { type: "submit" } }, "Create key");

  const load = async (): Promise<void> => {
    try {
      const keys = await json<ListOf<KeyItem>>("/api/v1/keys", { signal });
      replace(list, keyTable(keys.data, pending, revoke));
    } catch (error) {
      if (!signal.aborted) errors.show("Could not list the keys", error);
    }
  };

  async function revoke(key: KeyItem): Promise<void> {
    try {
      await json<KeyItem>(`/api/v1/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      pending.delete(key.id);
      await load();
    } catch (error) {
      errors.show(`Could not revoke ${key.name}`, error);
    }
  }

  async function create(): Promise<void> {
    errors.clear();
    const body: Record<string, unknown> = { name: name.value.trim() };
    const modelList = models.value.split(",").map((m) => m.trim()).filter((m) => m !== "");
    if (modelList.length > 0) body.models = modelList;
    const limits = { rpm: optionalNumber(rpm), tpm: optionalNumber(tpm), max_parallel: optionalNumber(parallel), budget_usd: optionalNumber(budget), expires_in_days: optionalNumber(expires) };
    for (const [k, v] of Object.entries(limits)) if (v !== undefined) body[k] = v;
    if (limits.budget_usd !== undefined) body.budget_period = period.value;
    if (role.value !== "") body.role = role.value;
    if (admin && owner.value.trim() !== "") body.owner = owner.value.trim();
    submit.disabled = true;
    try {
      const key = await json<KeyCreated>("/api/v1/keys", { method: "POST", body });
      showCreated(key);
      form.reset();
      await load();
    } catch (error) {
      errors.show("Could not create the key", error);
    } finally {
      submit.disabled = false;
    }
  }

  function showCreated(key: KeyCreated): void {
    const value = h("input", { class: "mono", testid: "created-key", attrs: { readonly: true, value: key.key, "aria-label": "The new API key", spellcheck: "false" } });
    const copied = h("span", { class: "muted", testid: "copy-status" });
    const copy = h(
      "button",
      {
        testid: "copy-key",
        attrs: { type: "button" },
        on: {
          click: () => {
            void copyText(key.key, value).then((ok) => replace(copied, ok ? "Copied." : "Copy failed: select the key and copy it."));
          },
        },
      },
      "Copy",
    );
    const done = h("button", { class: "secondary", testid: "created-key-dismiss", attrs: { type: "button" }, on: { click: () => { replace(created); created.hidden = true; } } }, "Done");
    replace(
      created,
      h("strong", null, `Key “${key.name}” created.`),
      h("p", null, "Copy it now: it is shown this once and stored nowhere."),
      h("div", { class: "row" }, value, copy, done, copied),
    );
    created.hidden = false;
    value.select();
  }

  const form = h(
    "form",
    {
      class: "grid-form",
      testid: "key-form",
      on: {
        submit: (event) => {
          event.preventDefault();
          void create();
        },
      },
    },
    field("Name", name),
    field("Models", models),
    field("Requests / min", rpm),
    field("Tokens / min", tpm),
    field("Parallel", parallel),
    field("Budget (USD)", budget),
    field("Budget period", period),
    field("Expires in (days)", expires),
    field("Role", role),
    admin ? field("Owner (user id or name)", owner) : null,
    h("div", { class: "form-actions" }, submit),
  );
  void load();
  return section("API keys", errors.el, created, form, list);
}

function keyTable(keys: KeyItem[], pending: Set<string>, revoke: (key: KeyItem) => Promise<void>): HTMLElement {
  return table(
    ["Name", "Prefix", "Role", "Owner", "Models", "Limits", "Budget", "Expires", "Last used", "Status", ""],
    keys.map((k) => {
      const limits = [k.rpm === null ? null : `${num(k.rpm)} rpm`, k.tpm === null ? null : `${num(k.tpm)} tpm`, k.max_parallel === null ? null : `${k.max_parallel} parallel`].filter((x) => x !== null);
      const statusKind = k.status === "active" ? "ok" : k.status === "revoked" ? "bad" : "warn";
      const action =
        k.status !== "active"
          ? ""
          : h(
              "button",
              {
                class: pending.has(k.id) ? "danger small" : "secondary small",
                testid: `revoke-${k.name}`,
                attrs: { type: "button" },
                on: {
                  click: (event) => {
                    const button = event.currentTarget as HTMLButtonElement;
                    if (!pending.has(k.id)) {
                      // Two steps, no native dialog: the first click asks, the second revokes.
                      pending.add(k.id);
                      button.className = "danger small";
                      replace(button, "Confirm revoke");
                      return;
                    }
                    button.disabled = true;
                    void revoke(k);
                  },
                },
              },
              pending.has(k.id) ? "Confirm revoke" : "Revoke",
            );
      return h(
        "tr",
        { dataset: { key: k.id }, testid: "key-row" },
        [
          h("span", { testid: "key-row-name" }, k.name),
          h("code", null, `${k.prefix}…`),
          k.role,
          k.owner_id ?? "—",
          k.models === null ? "all" : k.models.join(", "),
          limits.length === 0 ? "—" : limits.join(", "),
          k.budget_usd === null ? "—" : `${usd(k.budget_usd)} / ${k.budget_period}`,
          when(k.expires_at),
          when(k.last_used_at),
          badge(k.status, statusKind),
          action,
        ].map((cell) => h("td", null, cell)),
      );
    }),
    { testid: "keys-table", empty: "No API key yet." },
  );
}

async function copyText(value: string, input: HTMLInputElement): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(value);
    return true;
  } catch {
    input.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
}

function usersSection(signal: AbortSignal): HTMLElement {
  const errors = new ErrorLine();
  const list = h("div", { testid: "users-list" });
  const username = h("input", { testid: "user-username", attrs: { name: "username", required: true, maxlength: 64, pattern: "[A-Za-z0-9][A-Za-z0-9._@\\-]{0,63}", autocomplete: "off" } });
  const password = h("input", { testid: "user-password", attrs: { name: "password", type: "password", autocomplete: "new-password", placeholder: "none: keys only", minlength: 8 } });
  const role = h("select", { testid: "user-role-select", attrs: { name: "role" } }, ROLES.map((r) => h("option", { attrs: { value: r } }, r)));
  const email = h("input", { testid: "user-email", attrs: { name: "email", type: "email" } });
  const display = h("input", { testid: "user-display-name", attrs: { name: "display_name", maxlength: 128 } });
  const submit = h("button", { testid: "user-create", attrs: { type: "submit" } }, "Create user");

  const load = async (): Promise<void> => {
    try {
      const users = await json<ListOf<UserItem>>(withQuery("/api/v1/users", { limit: 1000 }), { signal });
      replace(
        list,
        table(
          ["User name", "Display name", "E-mail", "Role", "Active", "Limits", "Created", "Last login"],
          users.data.map((u) => [
            h("span", { testid: "user-row-name" }, u.username),
            u.display_name ?? "—",
            u.email ?? "—",
            u.role,
            u.active ? badge("active", "ok") : badge("inactive", "bad"),
            limitsText(u.limits),
            when(u.created_at),
            when(u.last_login_at),
          ]),
          { testid: "users-table", empty: "No user." },
        ),
      );
    } catch (error) {
      if (!signal.aborted) errors.show("Could not list the users", error);
    }
  };

  const form = h(
    "form",
    {
      class: "grid-form",
      testid: "user-form",
      on: {
        submit: (event) => {
          event.preventDefault();
          void (async () => {
            errors.clear();
            const body: Record<string, unknown> = { username: username.value.trim(), role: role.value };
            if (password.value !== "") body.password = password.value;
            if (email.value.trim() !== "") body.email = email.value.trim();
            if (display.value.trim() !== "") body.display_name = display.value.trim();
            submit.disabled = true;
            try {
              await json<UserItem>("/api/v1/users", { method: "POST", body });
              form.reset();
              await load();
            } catch (error) {
              errors.show("Could not create the user", error);
            } finally {
              submit.disabled = false;
            }
          })();
        },
      },
    },
    field("User name", username),
    field("Password", password),
    field("Role", role),
    field("E-mail", email),
    field("Display name", display),
    h("div", { class: "form-actions" }, submit),
  );
  void load();
  return section("Users", errors.el, form, list);
}

function limitsText(limits: Record<string, unknown>): string {
  const parts = Object.entries(limits)
    .filter(([k, v]) => v !== null && v !== undefined && !(k === "budget_period" && limits.budget_usd == null))
    .map(([k, v]) => `${k} ${String(v)}`);
  return parts.length === 0 ? "—" : parts.join(", ");
}

function auditSection(signal: AbortSignal): HTMLElement {
  const errors = new ErrorLine();
  const list = h("div", { testid: "audit-list" });
  const range = h("select", { testid: "audit-window", attrs: { name: "window" } }, ["1h", "24h", "7d", "30d"].map((w) => h("option", { attrs: { value: w, selected: w === "7d" } }, w)));
  const action = h("input", { testid: "audit-action", attrs: { name: "action", placeholder: "key.create, user.login…" } });
  const actor = h("input", { testid: "audit-actor", attrs: { name: "actor", placeholder: "user:alice, cli…" } });

  const load = async (): Promise<void> => {
    try {
      const entries = await json<Ranged<AuditItem>>(
        withQuery("/api/v1/audit", { window: range.value, action: action.value.trim(), actor: actor.value.trim(), limit: 200 }),
        { signal },
      );
      replace(
        list,
        table(
          ["When", "Actor", "Action", "Target", "Request", "Address", "Change"],
          entries.data.map((e) => [
            when(e.created_at),
            e.actor,
            h("code", null, e.action),
            `${e.target_type}${e.target_id === null ? "" : ` ${e.target_id}`}`,
            e.request_id ?? "—",
            e.ip_address ?? "—",
            e.before === null && e.after === null ? "—" : jsonDetails("before / after", { before: e.before, after: e.after }),
          ]),
          { testid: "audit-table", empty: "No action in this range." },
        ),
      );
    } catch (error) {
      if (!signal.aborted) errors.show("Could not read the audit log", error);
    }
  };
  const filters = h(
    "form",
    {
      class: "filters",
      on: {
        submit: (event) => {
          event.preventDefault();
          void load();
        },
      },
    },
    field("Window", range),
    field("Action", action),
    field("Actor", actor),
    h("button", { attrs: { type: "submit" } }, "Apply"),
  );
  range.addEventListener("change", () => void load());
  void load();
  return section("Audit log", errors.el, filters, list);
}

// The server's reply shapes (src/helixflow/api/admin/*.py, auth_routes.py, openai/models.py).

export type Role = "admin" | "developer" | "viewer";

export interface UserItem {
  object: "user";
  id: string;
  username: string;
  role: Role;
  active: boolean;
  email: string | null;
  display_name: string | null;
  limits: Record<string, unknown>;
  created_at: string | null;
  last_login_at: string | null;
}

export interface Me {
  object: "principal";
  kind: "key" | "user" | "anonymous";
  role: Role;
  name: string;
  user_id: string | null;
  key_id: string | null;
  models: string[] | null;
  user: UserItem | null;
}

export interface ListOf<T> {
  object?: string;
  data: T[];
}

export interface Ranged<T> {
  since: string;
  until: string;
  data: T[];
}

export interface ModelCard {
  id: string;
  object: string;
  created: number;
  owned_by: string;
  kind?: string;
  context_window?: number | null;
  aliases?: string[];
  targets?: string[];
}

export interface TimeseriesItem {
  bucket_start: string;
  requests: number;
  errors: number;
  tokens: number;
  latency_avg_ms: number | null;
  latency_p95_ms: number | null;
}

export interface TimeseriesResponse extends Ranged<TimeseriesItem> {
  bucket: "minute" | "hour" | "day";
}

export interface ModelPerformanceItem {
  served_model: string;
  requests: number;
  errors: number;
  error_rate: number;
  latency_avg_ms: number | null;
  latency_p50_ms: number | null;
  latency_p95_ms: number | null;
  ttft_avg_ms: number | null;
  ttft_p50_ms: number | null;
  ttft_p95_ms: number | null;
  output_tokens_per_second: number | null;
  prompt_tokens_avg: number;
  completion_tokens_avg: number;
}

export interface RoutingStatItem {
  served_model: string | null;
  provider: string | null;
  requests: number;
  successes: number;
  success_rate: number;
  latency_p50_ms: number | null;
  latency_p95_ms: number | null;
  ttft_p50_ms: number | null;
  prompt_tokens: number;
  completion_tokens: number;
  cost_usd: number;
}

export interface UsageItem {
  key: string | null;
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost_usd: number;
}

export interface TargetState {
  id: string;
  model: string;
  provider: string;
  kind: string;
  capabilities: string[];
  context_window: number | null;
  input_price_per_mtok: number;
  output_price_per_mtok: number;
  quality: Record<string, number>;
  region: string | null;
  weight: number;
  max_concurrency: number | null;
  fallbacks: string[];
  circuit: string;
  in_flight: number;
  queue_depth: number;
  ewma_latency_ms: number | null;
  ewma_ttft_ms: number | null;
  tokens_per_s: number | null;
  successes: number;
  failures: number;
  last_error: string | null;
  probe_ok: boolean | null;
}

export interface GroupState {
  name: string;
  strategy: string;
  options: Record<string, unknown>;
  affinity: string;
  targets: string[];
}

export interface Candidate {
  target?: string;
  score?: number;
  note?: string;
  excluded?: string;
  fallback?: boolean;
  [key: string]: unknown;
}

export interface DecisionItem {
  id: number;
  request_id: string;
  created_at: string;
  requested_model: string | null;
  strategy: string;
  candidates: unknown[];
  chosen_target: string | null;
  reason: string | null;
  fallback_attempts: number;
  attempts: unknown[];
  decision_ms: number | null;
}

export interface DecisionsResponse extends Ranged<DecisionItem> {
  next_before_id: number | null;
}

export interface KeyItem {
  object: "api_key";
  id: string;
  name: string;
  prefix: string;
  role: Role;
  owner_id: string | null;
  models: string[] | null;
  rpm: number | null;
  tpm: number | null;
  max_parallel: number | null;
  budget_usd: number | null;
  budget_period: string;
  expires_at: string | null;
  revoked_at: string | null;
  created_at: string | null;
  last_used_at: string | null;
  created_by: string | null;
  status: "active" | "revoked" | "expired";
}

export interface KeyCreated extends KeyItem {
  key: string;
}

export interface AuditItem {
  id: number;
  created_at: string;
  actor: string;
  action: string;
  target_type: string;
  target_id: string | null;
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
  request_id: string | null;
  ip_address: string | null;
}

// The pieces every screen is made of: data loading with its three states,
// tables, forms that show the server's field errors, dialogs, formats.

import type { ComponentChildren, JSX } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "../api";

// ---- loading ----

export interface Loaded<T> {
  data: T | undefined;
  error: Error | undefined;
  loading: boolean;
  reload: () => void;
}

/** Runs `load` when `deps` change; a newer load cancels the older one. */
export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Loaded<T> {
  const [state, setState] = useState<{ data?: T; error?: Error; loading: boolean }>({ loading: true });
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    const controller = new AbortController();
    setState((s) => ({ ...s, loading: true, error: undefined }));
    load(controller.signal).then(
      (data) => !controller.signal.aborted && setState({ data, loading: false }),
      (error: Error) =>
        !controller.signal.aborted && error.name !== "AbortError" && setState({ error, loading: false }),
    );
    return () => controller.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, generation]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { data: state.data, error: state.error, loading: state.loading, reload };
}

/** Calls `tick` every `ms` while the screen is open and the tab visible. */
export function useInterval(tick: () => void, ms: number) {
  const saved = useRef(tick);
  saved.current = tick;
  useEffect(() => {
    const id = setInterval(() => document.visibilityState === "visible" && saved.current(), ms);
    return () => clearInterval(id);
  }, [ms]);
}

export function useDebounced<T>(value: T, ms = 250): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const id = setTimeout(() => setDebounced(value), ms);
    return () => clearTimeout(id);
  }, [value, ms]);
  return debounced;
}

export function errorText(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 403) return `Not allowed: ${error.detail}`;
    if (error.status === 404) return `Not found: ${error.detail}`;
    return error.detail;
  }
  return error instanceof Error ? error.message : String(error);
}

export function ErrorBox({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  return (
    <div class="error-box" role="alert">
      <span>{errorText(error)}</span>
      {onRetry && (
        <button type="button" class="link" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}

/** Loading, error and empty states around whatever `children` draws. */
export function LoadState<T>({
  loaded,
  empty,
  isEmpty,
  children,
}: {
  loaded: Loaded<T>;
  empty?: ComponentChildren;
  isEmpty?: (data: T) => boolean;
  children: (data: T) => ComponentChildren;
}) {
  if (loaded.error) return <ErrorBox error={loaded.error} onRetry={loaded.reload} />;
  if (loaded.data === undefined) return <div class="loading" aria-busy="true">Loading…</div>;
  const data = loaded.data;
  const none = isEmpty ? isEmpty(data) : Array.isArray(data) && data.length === 0;
  if (none) return <div class="empty">{empty ?? "Nothing here yet."}</div>;
  return <>{children(data)}</>;
}

// ---- tables ----

export interface Column<T> {
  title: string;
  cell: (row: T) => ComponentChildren;
  class?: string;
}

export function Table<T>({
  columns,
  rows,
  rowKey,
  selected,
  onToggle,
  onToggleAll,
  testId,
}: {
  columns: Column<T>[];
  rows: T[];
  rowKey: (row: T) => string | number;
  selected?: Set<string | number>;
  onToggle?: (key: string | number) => void;
  onToggleAll?: (all: boolean) => void;
  testId?: string;
}) {
  const allSelected = !!selected && rows.length > 0 && rows.every((r) => selected.has(rowKey(r)));
  return (
    <div class="table-wrap">
      <table data-testid={testId}>
        <thead>
          <tr>
            {selected && (
              <th class="check">
                <input
                  type="checkbox"
                  aria-label="select all on this page"
                  checked={allSelected}
                  onChange={() => onToggleAll?.(!allSelected)}
                />
              </th>
            )}
            {columns.map((c) => (
              <th class={c.class}>{c.title}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((row) => {
            const key = rowKey(row);
            return (
              <tr key={key} class={selected?.has(key) ? "selected" : undefined}>
                {selected && (
                  <td class="check">
                    <input
                      type="checkbox"
                      aria-label="select"
                      checked={selected.has(key)}
                      onChange={() => onToggle?.(key)}
                    />
                  </td>
                )}
                {columns.map((c) => (
                  <td class={c.class}>{c.cell(row)}</td>
                ))}
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

// ---- forms ----

export interface FormState {
  busy: boolean;
  error: unknown;
  fieldError: (field: string) => string | undefined;
  submit: (e: Event) => void;
}

/**
 * A form's submit: runs `validate` (messages by field) before anything is
 * sent, then `send`; a problem from the server lands on its fields.
 */
export function useForm(
  send: () => Promise<void>,
  validate: () => Record<string, string | undefined> = () => ({}),
): FormState {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const [local, setLocal] = useState<Record<string, string | undefined>>({});
  const submit = (e: Event) => {
    e.preventDefault();
    const problems = validate();
    setLocal(problems);
    if (Object.values(problems).some(Boolean)) {
      setError(undefined);
      return;
    }
    setBusy(true);
    setError(undefined);
    send().then(
      () => setBusy(false),
      (err) => {
        setBusy(false);
        setError(err);
      },
    );
  };
  const fieldError = (field: string) =>
    local[field] ?? (error instanceof ApiError ? error.fieldMessage(field) : undefined);
  return { busy, error, fieldError, submit };
}

export function Field({
  label,
  error,
  hint,
  children,
}: {
  label: string;
  error?: string;
  hint?: string;
  children: ComponentChildren;
}) {
  return (
    <label class={error ? "field invalid" : "field"}>
      <span class="label">{label}</span>
      {children}
      {error ? <span class="field-error">{error}</span> : hint && <span class="hint">{hint}</span>}
    </label>
  );
}

export function FormError({ form }: { form: FormState }) {
  if (!form.error) return null;
  return <ErrorBox error={form.error} />;
}

export function Modal({
  title,
  onClose,
  children,
}: {
  title: string;
  onClose: () => void;
  children: ComponentChildren;
}) {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [onClose]);
  return (
    <div class="modal-backdrop" onClick={(e) => e.target === e.currentTarget && onClose()}>
      <div class="modal" role="dialog" aria-modal="true" aria-label={title}>
        <header>
          <h2>{title}</h2>
          <button type="button" class="icon" aria-label="close" onClick={onClose}>
            ×
          </button>
        </header>
        {children}
      </div>
    </div>
  );
}

/** A secret the server shows once: visible, copyable, with that warning. */
export function ShownOnce({ label, value }: { label: string; value: string }) {
  return (
    <div class="shown-once">
      <span class="label">{label} — shown once, copy it now</span>
      <pre data-testid="secret">{value}</pre>
      <button type="button" onClick={() => navigator.clipboard?.writeText(value)}>
        Copy
      </button>
    </div>
  );
}

export function Page({
  title,
  actions,
  children,
}: {
  title: string;
  actions?: ComponentChildren;
  children: ComponentChildren;
}) {
  useEffect(() => {
    document.title = `${title} · Telemark`;
  }, [title]);
  return (
    <section class="page">
      <header class="page-head">
        <h1>{title}</h1>
        <div class="actions">{actions}</div>
      </header>
      {children}
    </section>
  );
}

export function Badge({ tone, children }: { tone: string; children: ComponentChildren }) {
  return <span class={`badge ${tone}`}>{children}</span>;
}

export function OnlineBadge({ online }: { online: boolean }) {
  return <Badge tone={online ? "good" : "muted"}>{online ? "online" : "offline"}</Badge>;
}

export function SeverityBadge({ severity }: { severity: string }) {
  const tone = { critical: "bad", major: "bad", minor: "warn", warning: "warn" }[severity] ?? "muted";
  return <Badge tone={tone}>{severity}</Badge>;
}

/**
 * Keyset paging: `cursor` is where the shown page starts (null: the first
 * page); `pager(next)` draws Previous/Next, `next` being the cursor after
 * this page or null at the end. Going back to page one when `resetKey`
 * changes (a new filter).
 */
export function useCursorPages<C>(resetKey: unknown) {
  const [stack, setStack] = useState<(C | null)[]>([null]);
  const first = useRef(true);
  useEffect(() => {
    if (first.current) first.current = false;
    else setStack([null]);
  }, [resetKey]);
  const cursor = stack[stack.length - 1];
  const pager = (next: C | null | undefined, summary?: string) => (
    <Pager
      hasPrevious={stack.length > 1}
      hasNext={next != null}
      onPrevious={() => setStack(stack.slice(0, -1))}
      onNext={() => next != null && setStack([...stack, next])}
      summary={summary ?? (stack.length > 1 ? `Page ${stack.length}` : undefined)}
    />
  );
  return { cursor, pager };
}

/** The id after which the next page starts, if `list` filled its page. */
export function nextId<T extends { id: number }>(list: T[], pageSize: number): number | null {
  return list.length === pageSize ? list[list.length - 1].id : null;
}

/**
 * A button's action against the server: its error (shown by the screen
 * until the next try) and `run`, which calls `then` (a reload) on success.
 */
export function useAction() {
  const [error, setError] = useState<unknown>(null);
  const run = async (action: () => Promise<unknown>, then?: () => void) => {
    try {
      await action();
      setError(null);
      then?.();
    } catch (e) {
      setError(e);
    }
  };
  return { error, run };
}

/** Cancel and submit at the foot of a dialog's form. */
export function DialogButtons({
  onCancel,
  busy,
  label,
  cancelLabel = "Cancel",
  danger,
  disabled,
}: {
  onCancel: () => void;
  busy: boolean;
  label: string;
  cancelLabel?: string;
  danger?: boolean;
  disabled?: boolean;
}) {
  return (
    <footer>
      <button type="button" onClick={onCancel}>
        {cancelLabel}
      </button>
      <button type="submit" class={danger ? "primary danger" : "primary"} disabled={busy || disabled}>
        {label}
      </button>
    </footer>
  );
}

/** Previous and Next for keyset pages (see `useCursorPages`). */
export function Pager({
  hasPrevious,
  hasNext,
  onPrevious,
  onNext,
  summary,
}: {
  hasPrevious: boolean;
  hasNext: boolean;
  onPrevious: () => void;
  onNext: () => void;
  summary?: string;
}) {
  return (
    <nav class="pager" aria-label="pages">
      <button type="button" disabled={!hasPrevious} onClick={onPrevious}>
        ‹ Previous
      </button>
      {summary && <span>{summary}</span>}
      <button type="button" disabled={!hasNext} onClick={onNext}>
        Next ›
      </button>
    </nav>
  );
}

// ---- formats ----

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const number = new Intl.NumberFormat();

export function formatTime(ms: number | null | undefined): string {
  return ms == null ? "—" : dateTime.format(new Date(ms));
}

export function formatAgo(ms: number | null | undefined, now = Date.now()): string {
  if (ms == null) return "never";
  const s = Math.round((now - ms) / 1000);
  // A deadline or an expiry lies ahead.
  if (s <= -5) {
    const ahead = -s;
    if (ahead < 60) return `in ${ahead} s`;
    if (ahead < 3600) return `in ${Math.floor(ahead / 60)} min`;
    if (ahead < 86400) return `in ${Math.floor(ahead / 3600)} h`;
    return `in ${Math.floor(ahead / 86400)} d`;
  }
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function formatNumber(n: number | null | undefined, digits = 0): string {
  if (n == null || Number.isNaN(n)) return "—";
  return digits ? n.toFixed(digits) : number.format(n);
}

export function Time({ ms }: { ms: number | null | undefined }) {
  return <time title={formatTime(ms)}>{formatAgo(ms)}</time>;
}

export type InputEvent = JSX.TargetedEvent<HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement, Event>;
export const valueOf = (e: InputEvent) => e.currentTarget.value;

// The device page's remote terminal: xterm.js over the session stream
// (binary frames of docs/device-protocol.md, "Remote sessions"). Output is
// acknowledged only once xterm has drawn it, so a `cat` of a large file or
// `yes` on the device waits for this page instead of flooding it.
import { useEffect, useRef, useState } from "preact/hooks";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import { api, ApiError, type Device } from "../api";
import { formatAgo, formatNumber, Table, useInterval, useLoad } from "../components/ui";
import { isOperator, session as login } from "../session";

const HEADER = 13;
const MAX_DATA = 16 * 1024;
const DATA = 1;
const ACK = 2;
const RESIZE = 5;
const END = 6;

type RemoteSession = {
  id: string;
  kind: string;
  opened_by: string;
  started_at: number;
  bytes_to_device: number;
  bytes_from_device: number;
  port: number | null;
  stream: string;
  window: number;
  state: string;
  execution_id: number;
  bound_port: number | null;
  bastion: string | null;
};

function frame(kind: number, channel: number, value: bigint, body?: Uint8Array): ArrayBuffer {
  const buffer = new ArrayBuffer(HEADER + (body?.length ?? 0));
  const view = new DataView(buffer);
  view.setUint8(0, kind);
  view.setUint32(1, channel);
  view.setBigUint64(5, value);
  if (body) new Uint8Array(buffer, HEADER).set(body);
  return buffer;
}

export function RemoteTerminal({ device }: { device: Device }) {
  const host = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<"idle" | "opening" | "open" | "ended">("idle");
  const [note, setNote] = useState<string>("");
  const [session, setSession] = useState<RemoteSession | null>(null);
  const stop = useRef<() => void>(() => {});

  useEffect(() => () => stop.current(), []);

  // Ended by the user: the platform ends it on both sides, logs it, and
  // sends the reason, which the socket shows before it closes.
  async function close() {
    if (!session) return stop.current();
    try {
      await api(`/remote-sessions/${session.id}`, { method: "DELETE" });
    } catch {
      stop.current();
    }
  }

  async function open() {
    if (!host.current) return;
    stop.current();
    host.current.innerHTML = "";
    const term = new Terminal({ cursorBlink: true, convertEol: false, fontSize: 13, scrollback: 5000 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    // Copy as desktop terminals do: Ctrl+C copies when text is selected
    // (and interrupts otherwise), Ctrl+Shift+C always copies; pasting
    // (Ctrl+V, the context menu) reaches the device as typed input.
    term.attachCustomKeyEventHandler((e) => {
      const copy = e.type === "keydown" && e.ctrlKey && e.key.toLowerCase() === "c" && (e.shiftKey || term.hasSelection());
      if (copy && term.hasSelection()) {
        void navigator.clipboard?.writeText(term.getSelection());
        term.clearSelection();
        return false;
      }
      return !copy;
    });
    term.open(host.current);
    fit.fit();
    setState("opening");
    setNote("Asking the device to open a terminal…");
    let s: RemoteSession;
    try {
      s = await api<RemoteSession>(`/devices/${device.id}/sessions`, {
        method: "POST",
        body: { kind: "terminal", cols: term.cols, rows: term.rows },
      });
    } catch (e) {
      setState("ended");
      setNote(e instanceof ApiError ? e.message : String(e));
      term.dispose();
      return;
    }
    setSession(s);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${s.stream}`);
    socket.binaryType = "arraybuffer";
    const window_ = BigInt(s.window);
    // Device → here: what arrived, what xterm drew, what was acknowledged.
    let received = 0n;
    let drawn = 0n;
    let acked = 0n;
    // Here → device: what was sent and what the device acknowledged.
    let sent = 0n;
    let credited = 0n;
    let pending: Uint8Array[] = [];
    let open_ = false;
    const encoder = new TextEncoder();
    const flush = () => {
      while (open_ && pending.length > 0) {
        const room = Number(window_ - (sent - credited));
        if (room <= 0) return;
        let chunk = pending[0];
        if (chunk.length > Math.min(room, MAX_DATA)) {
          pending[0] = chunk.subarray(Math.min(room, MAX_DATA));
          chunk = chunk.subarray(0, Math.min(room, MAX_DATA));
        } else {
          pending.shift();
        }
        socket.send(frame(DATA, 0, sent, chunk));
        sent += BigInt(chunk.length);
      }
    };
    const resize = () => {
      fit.fit();
      if (open_) socket.send(frame(RESIZE, 0, (BigInt(term.cols) << 16n) | BigInt(term.rows)));
    };
    const observer = new ResizeObserver(() => resize());
    observer.observe(host.current);
    const typed = term.onData((text) => {
      pending.push(encoder.encode(text));
      flush();
    });
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        const e = JSON.parse(event.data);
        if (e.event === "opened") {
          open_ = true;
          setState("open");
          setNote("");
          resize();
          flush();
          term.focus();
        } else if (e.event === "ended") {
          open_ = false;
          setState("ended");
          setNote(e.reason ?? "The session ended.");
          term.write(`\r\n\x1b[2m[session ended: ${e.reason ?? ""}]\x1b[0m\r\n`);
        }
        return;
      }
      const view = new DataView(event.data as ArrayBuffer);
      if (view.byteLength < HEADER) return;
      const kind = view.getUint8(0);
      const value = view.getBigUint64(5);
      if (kind === DATA) {
        open_ = true;
        const bytes = new Uint8Array(event.data as ArrayBuffer, HEADER);
        received += BigInt(bytes.length);
        term.write(bytes, () => {
          drawn += BigInt(bytes.length);
          // Credit back a quarter window at a time, or all when caught up.
          if (drawn - acked >= window_ / 4n || drawn === received) {
            acked = drawn;
            if (socket.readyState === WebSocket.OPEN) socket.send(frame(ACK, 0, acked));
          }
        });
      } else if (kind === ACK) {
        credited = value;
        flush();
      }
    };
    socket.onclose = () => {
      open_ = false;
      setState((current) => (current === "ended" ? current : "ended"));
    };
    stop.current = () => {
      observer.disconnect();
      typed.dispose();
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(frame(END, 0, 0n, encoder.encode("the console closed the terminal")));
      }
      socket.close();
      pending = [];
    };
  }

  return (
    <section class="terminal-panel">
      <div class="toolbar">
        {(state === "idle" || state === "ended") && (
          <button type="button" class="primary" onClick={open}>
            {state === "idle" ? "Open terminal" : "Open a new terminal"}
          </button>
        )}
        {(state === "opening" || state === "open") && (
          <button type="button" onClick={close}>
            Close terminal
          </button>
        )}
        <span class="muted" role="status" data-testid="terminal-state">
          {state === "open" ? `Connected · session ${session?.id.slice(0, 8)}` : note}
        </span>
      </div>
      <div ref={host} class="terminal" data-testid="terminal" />
      <ReverseTunnel device={device} />
      <OpenSessions device={device} changed={state} />
      <p class="muted">
        Other services of the device (its sshd, its web UI) are reached with{" "}
        <code>telemark tunnel {device.mac} --remote-port 22 --local-port 2222</code> and an API token; the device
        allows only the ports its <code>[remote] allowed_ports</code> lists. Sessions end after 15 minutes idle.
      </p>
    </section>
  );
}

// A reverse SSH tunnel: the device runs `ssh -N -R` to the platform's
// bastion with a key made for this session; the page shows how to jump in.
function ReverseTunnel({ device }: { device: Device }) {
  const [session, setSession] = useState<RemoteSession | null>(null);
  const [note, setNote] = useState("");
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (!session || session.bound_port) return;
    // Poll until the device reports the port, or the session is gone.
    const timer = setInterval(async () => {
      try {
        const s = await api<RemoteSession>(`/remote-sessions/${session.id}`);
        if (s.bound_port) setSession(s);
      } catch (e) {
        clearInterval(timer);
        const execution = await api<{ error: string | null; state: string }>(
          `/executions/${session.execution_id}`,
        ).catch(() => null);
        setNote(execution?.error ?? "The tunnel ended.");
        setSession(null);
      }
    }, 1000);
    return () => clearInterval(timer);
  }, [session?.id, session?.bound_port]);

  async function open() {
    setBusy(true);
    setNote("");
    try {
      setSession(await api<RemoteSession>(`/devices/${device.id}/sessions`, { method: "POST", body: { kind: "reverse_ssh" } }));
    } catch (e) {
      setNote(e instanceof ApiError ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  }

  async function close() {
    if (!session) return;
    await api(`/remote-sessions/${session.id}`, { method: "DELETE" }).catch(() => {});
    setSession(null);
    setNote("Tunnel closed.");
  }

  const [user, hostPort] = (session?.bastion ?? "").split("@");
  return (
    <section class="reverse-tunnel" data-testid="reverse-tunnel">
      <h3>Reverse SSH tunnel</h3>
      {!session && (
        <button type="button" onClick={open} disabled={busy}>
          Open a reverse SSH tunnel
        </button>
      )}
      {session && !session.bound_port && <p class="muted">Waiting for the device to reach the bastion…</p>}
      {session?.bound_port && (
        <>
          <p>
            The device's sshd is on the bastion's port <strong>{session.bound_port}</strong> (loopback only) until
            the tunnel is closed or expires. From your machine:
          </p>
          <pre>
            ssh -J {user}@{hostPort} -p {session.bound_port} root@127.0.0.1
          </pre>
          <button type="button" onClick={close}>
            Close tunnel
          </button>
        </>
      )}
      {note && <p class="muted">{note}</p>}
    </section>
  );
}

// Who is on this device now: every open session, closable by its opener
// and by the operator's admins.
function OpenSessions({ device, changed }: { device: Device; changed: string }) {
  // Read again whenever this page's own terminal opens or ends.
  const sessions = useLoad(
    (signal) => api<RemoteSession[]>(`/devices/${device.id}/sessions`, { signal }),
    [device.id, changed],
  );
  useInterval(sessions.reload, 5000);
  const list = sessions.data ?? [];
  if (list.length === 0) return null;
  const me = login.value?.username;
  return (
    <section data-testid="open-sessions">
      <h3>Open sessions</h3>
      <Table
        rows={list}
        rowKey={(s) => s.id}
        columns={[
          { title: "Kind", cell: (s) => (s.kind === "tunnel" ? `tunnel to port ${s.port}` : s.kind.replace("_", " ")) },
          { title: "Opened by", cell: (s) => s.opened_by },
          { title: "Since", cell: (s) => formatAgo(s.started_at) },
          { title: "State", cell: (s) => s.state },
          { title: "Bytes to / from device", cell: (s) => `${formatNumber(s.bytes_to_device)} / ${formatNumber(s.bytes_from_device)}` },
          {
            title: "",
            cell: (s) =>
              (s.opened_by === me || isOperator.value) && (
                <button
                  type="button"
                  onClick={() => api(`/remote-sessions/${s.id}`, { method: "DELETE" }).finally(sessions.reload)}
                >
                  End
                </button>
              ),
          },
        ]}
      />
    </section>
  );
}

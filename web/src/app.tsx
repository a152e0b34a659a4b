// The frame of the console: login gate, navigation shaped by the role, and
// the routes of every screen.

import { useEffect } from "preact/hooks";
import { LocationProvider, Router, Route, useLocation } from "preact-iso";
import { isAdmin, isOperator, logout, restoreSession, session, myOrganisation } from "./session";
import { Login } from "./pages/login";
import { Dashboard } from "./pages/dashboard";
import { Devices } from "./pages/devices";
import { DeviceDetail } from "./pages/device";
import { DeviceModels } from "./pages/models";
import { ImportDevices, ImportRecords } from "./pages/imports";
import { LicenseKeys, ServiceModels } from "./pages/licenses";
import { Organisations } from "./pages/organisations";
import { Users } from "./pages/users";
import { AuditLog } from "./pages/audit";
import { Alarms, AlarmRules } from "./pages/alarms";
import { Account } from "./pages/account";
import { Statistics } from "./pages/statistics";
import { Diagnostics, JobDetail, Jobs } from "./pages/tasks";
import { CampaignDetail, Campaigns, Firmware, NewCampaign } from "./pages/firmware";
import { Page } from "./components/ui";

interface NavItem {
  href: string;
  label: string;
  show: () => boolean;
}

const always = () => true;
const admins = () => isAdmin.value;
const operator = () => isOperator.value;
// Integrators see the catalogue their customers are sold from; customers do not.
const aboveCustomers = () => session.value?.role === "operator-admin" || session.value?.role === "integrator-admin";

const NAV: { section: string; items: NavItem[] }[] = [
  {
    section: "Monitor",
    items: [
      { href: "/", label: "Dashboard", show: always },
      { href: "/devices", label: "Devices", show: always },
      { href: "/alarms", label: "Alarms", show: always },
      { href: "/statistics", label: "Statistics", show: always },
    ],
  },
  {
    section: "Operate",
    items: [
      { href: "/diagnostics", label: "Diagnostics", show: always },
      { href: "/jobs", label: "Jobs", show: always },
      { href: "/firmware", label: "Firmware", show: always },
      { href: "/campaigns", label: "Campaigns", show: always },
    ],
  },
  {
    section: "Registry",
    items: [
      { href: "/import", label: "Import devices", show: admins },
      { href: "/imports", label: "ERP import records", show: admins },
      { href: "/device-models", label: "Device models", show: aboveCustomers },
    ],
  },
  {
    section: "Licensing",
    items: [
      { href: "/license-keys", label: "License keys", show: admins },
      { href: "/service-models", label: "Service models", show: aboveCustomers },
    ],
  },
  {
    section: "Administration",
    items: [
      { href: "/integrators", label: "System integrators", show: operator },
      { href: "/customers", label: "Business customers", show: aboveCustomers },
      { href: "/users", label: "Users and roles", show: admins },
      { href: "/alarm-rules", label: "Alarm rules", show: admins },
      { href: "/audit", label: "System logs", show: admins },
    ],
  },
];

function Nav() {
  const { path } = useLocation();
  return (
    <nav class="sidebar" aria-label="main">
      <a class="brand" href="/">
        <img src="/favicon.svg" alt="" width="24" height="24" />
        Telemark
      </a>
      {NAV.map(({ section, items }) => {
        const visible = items.filter((i) => i.show());
        if (visible.length === 0) return null;
        return (
          <div class="nav-section">
            <span class="nav-title">{section}</span>
            {visible.map((i) => {
              const active = i.href === "/" ? path === "/" : path === i.href || path.startsWith(`${i.href}/`);
              return (
                <a href={i.href} class={active ? "active" : undefined} aria-current={active ? "page" : undefined}>
                  {i.label}
                </a>
              );
            })}
          </div>
        );
      })}
    </nav>
  );
}

function TopBar() {
  const s = session.value!;
  const { route } = useLocation();
  return (
    <header class="topbar">
      <span class="org">{myOrganisation.value?.name}</span>
      <span class="spacer" />
      <a href="/account" class="user" data-testid="current-user">
        {s.username} <span class="role">{s.role}</span>
      </a>
      <button
        type="button"
        onClick={async () => {
          await logout();
          route("/");
        }}
      >
        Log out
      </button>
    </header>
  );
}

function NotFound() {
  return (
    <Page title="Not found">
      <p>
        There is no such page. <a href="/">Back to the dashboard</a>.
      </p>
    </Page>
  );
}

function Shell() {
  return (
    <div class="shell">
      <Nav />
      <div class="main">
        <TopBar />
        <main>
          <Router>
            <Route path="/" component={Dashboard} />
            <Route path="/devices" component={Devices} />
            <Route path="/devices/:id" component={DeviceDetail} />
            <Route path="/device-models" component={DeviceModels} />
            <Route path="/import" component={ImportDevices} />
            <Route path="/imports" component={ImportRecords} />
            <Route path="/license-keys" component={LicenseKeys} />
            <Route path="/service-models" component={ServiceModels} />
            <Route path="/integrators" component={() => <Organisations kind="integrator" />} />
            <Route path="/customers" component={() => <Organisations kind="customer" />} />
            <Route path="/users" component={Users} />
            <Route path="/alarms" component={Alarms} />
            <Route path="/alarm-rules" component={AlarmRules} />
            <Route path="/audit" component={AuditLog} />
            <Route path="/statistics" component={Statistics} />
            <Route path="/account" component={Account} />
            <Route path="/diagnostics" component={Diagnostics} />
            <Route path="/jobs" component={Jobs} />
            <Route path="/jobs/:id" component={JobDetail} />
            <Route path="/firmware" component={Firmware} />
            <Route path="/campaigns" component={Campaigns} />
            <Route path="/campaigns/new" component={NewCampaign} />
            <Route path="/campaigns/:id" component={CampaignDetail} />
            <Route default component={NotFound} />
          </Router>
        </main>
      </div>
    </div>
  );
}

export function App() {
  useEffect(() => {
    restoreSession();
  }, []);
  if (session.value === undefined) return <div class="loading boot">Loading…</div>;
  return <LocationProvider>{session.value ? <Shell /> : <Login />}</LocationProvider>;
}

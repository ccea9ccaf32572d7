using System.Text.Json;
using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// <c>vmm check-backend</c> against the real back-ends: qemu-storage-daemon, both virtiofsds,
/// DPDK testpmd and our own <c>vmm serve blk|rng</c>. Each test pins the set of checks the
/// back-end fails (docs/check-backend.md explains each); every other check must pass or not
/// apply, the real request among the passes, and the back-end's data must be as it was.
/// </summary>
public sealed class CheckBackendTests : InteropTest
{
    // Generous for a loaded machine; it is also how long a lost kick or a one-shot back-end's
    // missing socket is waited for, so the failing checks each cost about this much.
    const string Timeout = "15";

    [Test]
    public async Task Qemu_storage_daemon_fails_only_the_ignored_config_offset()
    {
        var image = TestDisk.Create(PathIn("disk.img"), 64, prefillMiB: 8, seed: 21);
        var before = TestDisk.Sha256(image);
        var backend = await StartBlkAsync(BackendKind.StorageDaemon, image, PathIn("blk.sock"));

        var report = await CheckAsync(backend, "blk");

        report.AssertFailures(["config-offset"]);
        report.AssertPassed("request", "blk-write", "mem-replace", "mem-slots", "vring-base", "restart", "kick-before-enable", "second-connection");
        Assert.That(TestDisk.Sha256(image), Is.EqualTo(before), "the checker wrote back only what it had read");
        Assert.That(backend.HasExited, Is.False);
    }

    [Test]
    public async Task Vmm_serve_blk_passes_every_check()
    {
        var image = TestDisk.Create(PathIn("disk.img"), 64, prefillMiB: 8, seed: 22);
        var before = TestDisk.Sha256(image);
        var backend = Own(await BackendProcess.StartVmmBlkAsync(image, PathIn("blk.sock")));

        var report = await CheckAsync(backend, "blk");

        report.AssertFailures([]);
        report.AssertPassed("request", "status", "blk-write", "inflight", "reset-device", "second-connection");
        Assert.That(TestDisk.Sha256(image), Is.EqualTo(before));
    }

    [Test]
    public async Task Vmm_serve_blk_with_allow_writes_restores_the_disk()
    {
        var image = TestDisk.Create(PathIn("disk.img"), 64, prefillMiB: 64, seed: 23);
        var before = TestDisk.Sha256(image);
        var backend = Own(await BackendProcess.StartVmmBlkAsync(image, PathIn("blk.sock")));

        var report = await CheckAsync(backend, "blk", "--allow-writes");

        report.AssertFailures([]);
        Assert.That(report.Why("blk-write"), Does.Contain("wrote a 4 KiB pattern"));
        Assert.That(TestDisk.Sha256(image), Is.EqualTo(before), "the original is back");
    }

    [Test]
    public async Task Vmm_serve_rng_passes_every_check()
    {
        var backend = Own(await BackendProcess.StartVmmRngAsync(PathIn("rng.sock")));

        var report = await CheckAsync(backend, "rng");

        report.AssertFailures([]);
        report.AssertPassed("request", "status", "kick-before-enable", "reset-device", "second-connection");
    }

    [Test]
    public async Task C_virtiofsd_fails_a_second_GET_VRING_BASE_and_a_second_connection()
    {
        var shared = SharedTree.Create(PathIn("shared"));
        var before = SharedTree.Snapshot(shared);
        var backend = await StartVirtiofsdAsync(VirtiofsdKind.C, shared, PathIn("fs.sock"));

        var report = await CheckAsync(backend, "fs");

        report.AssertFailures(["vring-base-twice", "second-connection"]);
        report.AssertPassed("request", "mem-replace", "mem-slots", "vring-base", "restart", "kick-before-enable");
        Assert.That(report.Why("vring-base-twice"), Does.Contain("closed the connection"));
        Assert.That(SharedTree.Snapshot(shared), Is.EqualTo(before));
    }

    [Test]
    public async Task Rust_virtiofsd_fails_a_kick_before_enable_and_a_second_connection()
    {
        var shared = SharedTree.Create(PathIn("shared"));
        var before = SharedTree.Snapshot(shared);
        var backend = await StartVirtiofsdAsync(VirtiofsdKind.Rust, shared, PathIn("fs.sock"), tag: "check");

        var report = await CheckAsync(backend, "fs");

        report.AssertFailures(["kick-before-enable", "second-connection"]);
        report.AssertPassed("request", "config-sizes", "config-offset", "mem-replace", "mem-slots", "vring-base", "restart", "reset-device", "vring-base-twice");
        Assert.That(report.Why("kick-before-enable"), Does.Contain("did not complete"));
        Assert.That(SharedTree.Snapshot(shared), Is.EqualTo(before));
    }

    [Test]
    public async Task Testpmd_passes_every_check_and_echoes_the_frame()
    {
        var backend = await StartTestpmdAsync(PathIn("net.sock"));

        var report = await CheckAsync(backend, "net");

        report.AssertFailures([]);
        report.AssertPassed("request", "status", "mem-replace", "vring-base", "restart", "kick-before-enable", "vring-base-twice", "second-connection");
        Assert.That(report.Why("request"), Does.Contain("came back on receiveq1"));
    }

    async Task<CheckReport> CheckAsync(BackendProcess backend, string type, params string[] extra)
    {
        var r = await VmmRun.RunAsync(["check-backend", backend.Socket, "--type", type, "--json", "--timeout", Timeout, .. extra]);
        Assert.That(r.ExitCode, Is.AnyOf(0, 1), $"exit {r.ExitCode}: {r.Stderr}\n{backend.Describe()}");
        var report = new CheckReport(r.Stdout, backend);
        Assert.That(r.ExitCode, Is.EqualTo(report.Failed.Count == 0 ? 0 : 1), "exit 0 exactly when no check failed");
        return report;
    }

    /// <summary>The JSON document of one run, with assertions that print every row when they fail.</summary>
    sealed class CheckReport
    {
        readonly Dictionary<string, (string Result, string Why)> _rows = [];
        readonly string _text;
        readonly BackendProcess _backend;

        public CheckReport(string json, BackendProcess backend)
        {
            _text = json;
            _backend = backend;
            using var document = JsonDocument.Parse(json);
            foreach (var check in document.RootElement.GetProperty("checks").EnumerateArray())
                _rows[check.GetProperty("id").GetString()!] = (check.GetProperty("result").GetString()!, check.GetProperty("why").GetString()!);
        }

        public IReadOnlyList<string> Failed => [.. _rows.Where(r => r.Value.Result == "FAIL").Select(r => r.Key)];

        public string Why(string id) => _rows[id].Why;

        public void AssertFailures(string[] expected) =>
            Assert.That(Failed, Is.EquivalentTo(expected), Describe());

        public void AssertPassed(params string[] ids)
        {
            foreach (var id in ids)
                Assert.That(_rows[id].Result, Is.EqualTo("PASS"), $"{id}\n{Describe()}");
        }

        string Describe() => $"{_text}\n{_backend.Describe()}";
    }
}

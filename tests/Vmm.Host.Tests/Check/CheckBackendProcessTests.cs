using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Core.Memory;
using Vmm.Host.Tests.Run;
using Vmm.Host.Tests.VhostUser;
using Vmm.Virtio;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Conformance;

namespace Vmm.Host.Tests.Check;

/// <summary><c>./vmm check-backend</c> as a process: its table, its JSON document and its exit codes.</summary>
[TestFixture]
[NonParallelizable]
public sealed class CheckBackendProcessTests
{
    private WorkDir _dir = null!;

    [SetUp]
    public void SetUp() => _dir = new WorkDir();

    [TearDown]
    public void TearDown() => _dir.Dispose();

    [Test]
    public void Vmm_serve_rng_passes_and_the_table_has_a_row_per_check()
    {
        using ServeProcess serve = ServeProcess.Rng(_dir["rng.sock"]);

        VmmProcess.Result result = VmmProcess.Run("check-backend", serve.Socket, "--type", "rng", "--timeout", "30");

        Assert.That(result.ExitCode, Is.Zero, result.Stdout + result.Stderr);
        foreach (ConformanceCheck check in VhostUserConformance.ChecksFor(VirtioDeviceId.Entropy))
        {
            Assert.That(result.Stdout, Does.Contain(check.Id), "a row per check");
        }

        Assert.That(result.Stdout, Does.Contain("PASS"));
        Assert.That(result.Stdout, Does.Contain(" 0 failed"));
        Assert.That(result.Stderr, Is.Empty);
    }

    [Test]
    public void Json_is_one_document_with_every_check_and_its_spec()
    {
        using ServeProcess serve = ServeProcess.Rng(_dir["rng.sock"]);

        VmmProcess.Result result = VmmProcess.Run("check-backend", serve.Socket, "--type", "rng", "--json", "--timeout", "30");

        Assert.That(result.ExitCode, Is.Zero, result.Stdout + result.Stderr);
        using JsonDocument json = JsonDocument.Parse(result.Stdout);
        JsonElement root = json.RootElement;
        Assert.That(root.GetProperty("type").GetString(), Is.EqualTo("rng"));
        Assert.That(root.GetProperty("failed").GetInt32(), Is.Zero);
        JsonElement[] checks = [.. root.GetProperty("checks").EnumerateArray()];
        Assert.That(checks.Select(c => c.GetProperty("id").GetString()),
            Is.EqualTo(VhostUserConformance.ChecksFor(VirtioDeviceId.Entropy).Select(c => c.Id)));
        Assert.That(checks.Select(c => c.GetProperty("result").GetString()), Has.All.AnyOf("PASS", "N/A"));
        Assert.That(checks.Select(c => c.GetProperty("spec").GetString()), Has.All.Not.Empty);
        Assert.That(checks.Select(c => c.GetProperty("why").GetString()), Has.All.Not.Empty);
    }

    [Test]
    public void A_failing_check_exits_1()
    {
        // An entropy device that hands every buffer back empty: the request check fails.
        string socket = _dir["empty.sock"];
        using var device = new EmptyEntropyDevice();
        using VhostUserBackendServer server = VhostUserBackendServer.Bind(device, socket, NullLogger.Instance);
        using var stop = new CancellationTokenSource();
        Task serving = Task.Run(() => server.RunAsync(stop.Token));
        try
        {
            VmmProcess.Result result = VmmProcess.Run("check-backend", socket, "--type", "rng", "--json", "--timeout", "30");

            Assert.That(result.ExitCode, Is.EqualTo(1), result.Stdout + result.Stderr);
            using JsonDocument json = JsonDocument.Parse(result.Stdout);
            JsonElement request = json.RootElement.GetProperty("checks").EnumerateArray().Single(c => c.GetProperty("id").GetString() == "request");
            Assert.That(request.GetProperty("result").GetString(), Is.EqualTo("FAIL"));
            Assert.That(request.GetProperty("why").GetString(), Does.Contain("0 bytes written"));
        }
        finally
        {
            stop.Cancel();
            serving.Wait(TimeSpan.FromSeconds(10));
        }
    }

    [Test]
    public void A_missing_socket_is_one_sentence_and_exit_2()
    {
        VmmProcess.Result result = VmmProcess.Run("check-backend", _dir["none.sock"], "--type", "blk");

        Assert.That(result.ExitCode, Is.EqualTo(2));
        Assert.That(result.StderrLines, Has.Length.EqualTo(1));
        Assert.That(result.Stderr, Does.Contain("does not exist"));
        Assert.That(result.Stdout, Is.Empty);
    }

    [TestCase("--type", "floppy")]
    [TestCase("--timeout", "0")]
    [TestCase("--queue-size", "100")]
    public void Bad_options_are_one_sentence_and_exit_2(string option, string value)
    {
        string[] args = option == "--type"
            ? ["check-backend", _dir["none.sock"], option, value]
            : ["check-backend", _dir["none.sock"], "--type", "blk", option, value];

        VmmProcess.Result result = VmmProcess.Run(args);

        Assert.That(result.ExitCode, Is.EqualTo(2));
        Assert.That(result.StderrLines, Has.Length.EqualTo(1), result.Stderr);
    }

    [Test]
    public void Without_type_it_is_a_usage_error()
    {
        VmmProcess.Result result = VmmProcess.Run("check-backend", _dir["none.sock"]);

        Assert.That(result.ExitCode, Is.EqualTo(2));
        Assert.That(result.Stderr, Does.Contain("--type"));
    }

    /// <summary>virtio-rng that writes nothing into the buffers it returns (virtio 1.2, 5.4.6.2 wants one byte at least).</summary>
    private sealed class EmptyEntropyDevice() : VirtioDeviceBase(VirtioDeviceId.Entropy, SupportedRingFeatures, queueCount: 1, maxQueueSize: 256)
    {
        public override int ConfigSize => 0;

        public override void ReadConfig(uint offset, Span<byte> data) => data.Clear();

        public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
        {
        }

        protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory) => 0;
    }
}

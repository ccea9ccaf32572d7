using System.Security.Cryptography;
using System.Text.Json;
using NUnit.Framework;
using Vmm.Host.Cli;
using Vmm.Host.Run;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;

namespace Vmm.Host.Tests.Run;

/// <summary><c>vmm run</c>'s workloads in-process, across transports, rings and interrupt delivery.</summary>
[TestFixture]
public sealed class RunExecuteTests
{
    [Test, Combinatorial]
    public void Verify_holds_on_every_transport_ring_and_delivery(
        [Values(VirtioTransportKind.Mmio, VirtioTransportKind.Pci)] VirtioTransportKind transport,
        [Values(false, true)] bool packed,
        [Values(GuestInterruptDelivery.FunctionBacked, GuestInterruptDelivery.EventBacked)] GuestInterruptDelivery delivery)
    {
        using var image = new TempImage(1 << 20, seed: 21);
        RunOptions options = Options(image, RunWorkload.Verify, "queues=2") with
        {
            Transport = transport,
            PackedRing = packed,
            Delivery = delivery,
            BlockSize = 8192,
            IoDepth = 16,
        };
        var output = new StringWriter();
        Assert.That(RunCommand.Execute(options, output, CancellationToken.None), Is.Zero);
        byte[] expected = new byte[1 << 20];
        VerifyPattern.Fill(expected, 0);
        Assert.Multiple(() =>
        {
            Assert.That(output.ToString(), Does.StartWith("verify:").And.Contain("equal"));
            Assert.That(image.Read(), Is.EqualTo(expected));
        });
    }

    [Test]
    public void Checksum_covers_whole_sectors_only()
    {
        using var image = new TempImage((64 * 1024) + 100, seed: 22);
        var output = new StringWriter();
        RunCommand.Execute(Options(image, RunWorkload.Checksum), output, CancellationToken.None);
        byte[] sectors = image.Read()[..(64 * 1024)];
        Assert.That(output.ToString(), Is.EqualTo($"sha256 {Convert.ToHexStringLower(SHA256.HashData(sectors))}{Environment.NewLine}"));
    }

    [TestCase("randrw", VirtioTransportKind.Mmio, true, GuestInterruptDelivery.EventBacked)]
    [TestCase("write", VirtioTransportKind.Pci, false, GuestInterruptDelivery.FunctionBacked)]
    public void Bench_runs_every_queue_without_errors(string rw, VirtioTransportKind transport, bool packed, GuestInterruptDelivery delivery)
    {
        using var image = new TempImage(2 << 20, seed: 23);
        RunOptions options = Options(image, RunWorkload.Bench, "queues=2") with
        {
            Seconds = 1,
            Json = true,
            Mix = Enum.Parse<ReadWriteMix>(rw, ignoreCase: true),
            Transport = transport,
            PackedRing = packed,
            Delivery = delivery,
            IoDepth = 7,
        };
        var output = new StringWriter();
        RunCommand.Execute(options, output, CancellationToken.None);
        using JsonDocument doc = JsonDocument.Parse(output.ToString());
        Assert.Multiple(() =>
        {
            Assert.That(doc.RootElement.GetProperty("errors").GetInt64(), Is.Zero);
            Assert.That(doc.RootElement.GetProperty("ios").GetInt64(), Is.Positive);
            Assert.That(doc.RootElement.GetProperty("queues").GetInt32(), Is.EqualTo(2));
            Assert.That(doc.RootElement.GetProperty("iodepth").GetInt32(), Is.EqualTo(7));
            Assert.That(doc.RootElement.GetProperty("rw").GetString(), Is.EqualTo(rw));
        });
    }

    [Test]
    public void A_cancelled_bench_still_reports()
    {
        using var image = new TempImage(1 << 20, seed: 24);
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var output = new StringWriter();
        RunCommand.Execute(Options(image, RunWorkload.Bench) with { Seconds = 600, Json = true }, output, cancel.Token);
        using JsonDocument doc = JsonDocument.Parse(output.ToString());
        Assert.That(doc.RootElement.GetProperty("seconds").GetDouble(), Is.LessThan(600));
    }

    [Test]
    public void Probe_of_rng_lists_features_and_queues()
    {
        var options = new RunOptions { Devices = [new InProcessDeviceSource(DeviceSpec.Parse("rng"))], Workload = RunWorkload.Probe };
        var output = new StringWriter();
        RunCommand.Execute(options, output, CancellationToken.None);
        Assert.That(output.ToString(), Does.Contain("Entropy").And.Contain("q0: size 256").And.Not.Contain("capacity"));
    }

    private static RunOptions Options(TempImage image, RunWorkload workload, string extra = "") => new()
    {
        Devices = [new InProcessDeviceSource(DeviceSpec.Parse($"blk,disk={image.Path}{(extra.Length > 0 ? "," + extra : "")}"))],
        Workload = workload,
        MemorySize = 64 << 20,
    };
}

using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// Our virtio-net guest driver through our front-end (<c>vmm run --vhost-user S,type=net</c>)
/// against DPDK testpmd, whose io forwarding on one vhost port echoes every frame.
/// </summary>
public sealed class NetInteropTests : InteropTest
{
    [TestCase]
    [TestCase("--packed")]
    [TestCase("--no-mrg-rxbuf")]
    [TestCase("--no-event-idx", "--no-indirect", "--interrupts", "function")]
    public async Task Net_workload_gets_10000_frames_back_from_testpmd_intact(params string[] extra)
    {
        var backend = await StartTestpmdAsync(PathIn("net.sock"));

        var r = await VmmRun.RunAsync(["run", "--vhost-user", $"{backend.Socket},type=net", "--workload", "net", "--frames", "10000", .. extra]);

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Does.StartWith("net: sent 10000, received 10000, bad 0 (").And.Contain("frames/s"));
        Assert.That(r.Stderr, Does.Contain(extra.Contains("--no-mrg-rxbuf") ? "no MRG_RXBUF" : "MRG_RXBUF with 1024-byte buffers"));
        Assert.That(r.Stderr, Does.Contain(extra.Contains("--packed") ? "packed rings" : "split rings"), "testpmd offers RING_PACKED");
    }

    [Test]
    public async Task Net_bench_measures_64_and_1514_byte_frames()
    {
        var backend = await StartTestpmdAsync(PathIn("net.sock"));

        var r = await VmmRun.RunAsync("run", "--vhost-user", $"{backend.Socket},type=net", "--workload", "bench", "--seconds", "1", "--json");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Does.Contain("\"fps_64\":").And.Contain("\"fps_1514\":").And.Contain("\"errors\":0"));
    }
}

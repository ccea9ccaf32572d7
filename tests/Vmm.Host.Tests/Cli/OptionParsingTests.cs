using NUnit.Framework;
using Vmm.Host.Cli;
using Vmm.Host.Run;

namespace Vmm.Host.Tests.Cli;

[TestFixture]
public sealed class OptionParsingTests
{
    [TestCase("4096", 4096UL)]
    [TestCase("4k", 4096UL)]
    [TestCase("4K", 4096UL)]
    [TestCase("64M", 64UL << 20)]
    [TestCase("1G", 1UL << 30)]
    [TestCase("512MiB", 512UL << 20)]
    public void Sizes_parse(string text, ulong bytes) => Assert.That(SizeParser.Parse(text, "--memory"), Is.EqualTo(bytes));

    [TestCase("")]
    [TestCase("k")]
    [TestCase("-1")]
    [TestCase("1.5G")]
    [TestCase("99999999999999999999")]
    public void Bad_sizes_are_usage_errors(string text) =>
        Assert.That(() => SizeParser.Parse(text, "--memory"), Throws.TypeOf<UsageException>());

    [Test]
    public void Blk_device_specs_parse()
    {
        DeviceSpec spec = DeviceSpec.Parse("blk,disk=/tmp/a.img,read-only,queues=4,queue-size=128");
        Assert.That(spec, Is.EqualTo(new DeviceSpec("blk", "/tmp/a.img", true, 4, 128)));
        Assert.That(DeviceSpec.Parse("rng"), Is.EqualTo(new DeviceSpec("rng", null, false, 1, 256)));
    }

    [Test]
    public void Blk_cache_and_aio_sub_options_parse_as_serve_spells_them()
    {
        DeviceSpec spec = DeviceSpec.Parse("blk,disk=/dev/loop3,cache=none,aio=io_uring");
        Assert.That(spec.Cache, Is.EqualTo(Vmm.Virtio.Devices.Blk.BlkCacheMode.None));
        Assert.That(spec.Aio, Is.EqualTo(Vmm.Core.Posix.Storage.AioMode.IoUring));
        Assert.That(DeviceSpec.Parse("blk,disk=a,cache=unsafe,aio=threads").Cache, Is.EqualTo(Vmm.Virtio.Devices.Blk.BlkCacheMode.Unsafe));
        Assert.That(DeviceSpec.Parse("blk,disk=a,aio=inline").Aio, Is.EqualTo(Vmm.Core.Posix.Storage.AioMode.Inline));
        Assert.That(DeviceSpec.Parse("blk,disk=a").Cache, Is.EqualTo(Vmm.Virtio.Devices.Blk.BlkCacheMode.Writeback), "writeback by default");
        Assert.That(DeviceSpec.Parse("blk,disk=a").Aio, Is.EqualTo(Vmm.Core.Posix.Storage.AioMode.Auto));
    }

    [TestCase("net")]
    [TestCase("blk,disk=a,cache=direct")]
    [TestCase("blk,disk=a,aio=native")]
    [TestCase("blk,disk=a,cache")]
    [TestCase("rng,cache=none")]
    [TestCase("blk")]
    [TestCase("blk,disk=")]
    [TestCase("blk,disk=a,queues=0")]
    [TestCase("blk,disk=a,colour=red")]
    [TestCase("rng,disk=a")]
    public void Bad_device_specs_are_usage_errors(string text) =>
        Assert.That(() => DeviceSpec.Parse(text), Throws.TypeOf<UsageException>());

    [TestCase("512", 512)]
    [TestCase("4k", 4096)]
    [TestCase("128k", 131072)]
    public void Block_sizes_parse(string text, int bytes) => Assert.That(RunCommand.ParseBlockSize(text), Is.EqualTo(bytes));

    [TestCase("0")]
    [TestCase("1000")]
    [TestCase("1G")]
    public void Bad_block_sizes_are_usage_errors(string text) =>
        Assert.That(() => RunCommand.ParseBlockSize(text), Throws.TypeOf<UsageException>());

    [Test]
    public void The_latency_histogram_is_within_a_fraction_of_a_percent()
    {
        var h = new LatencyHistogram();
        for (long v = 1; v <= 100_000; v++)
        {
            h.Record(v * 100);
        }

        Assert.Multiple(() =>
        {
            Assert.That(h.Count, Is.EqualTo(100_000));
            Assert.That(h.Percentile(50), Is.EqualTo(5_000_000).Within(0.5).Percent);
            Assert.That(h.Percentile(99), Is.EqualTo(9_900_000).Within(0.5).Percent);
            Assert.That(LatencyHistogram.ValueOf(LatencyHistogram.Index(1023)), Is.EqualTo(1023));
            Assert.That(LatencyHistogram.ValueOf(LatencyHistogram.Index(2048)), Is.EqualTo(2048));
        });
    }

    [Test]
    public void The_verify_pattern_is_the_documented_formula()
    {
        byte[] bytes = new byte[32];
        VerifyPattern.Fill(bytes, 4096);
        ulong word = 4096 / 8;
        Assert.That(BitConverter.ToUInt64(bytes, 8), Is.EqualTo(unchecked(((word + 1) * 0x9E3779B97F4A7C15UL) + 0x0123456789ABCDEFUL)));
    }
}

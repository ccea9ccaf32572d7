using NUnit.Framework;
using Vmm.Virtio.Devices.Rng;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Devices;

[TestFixture]
public sealed class RngDeviceTests
{
    [Test]
    public void Fills_every_writable_buffer_and_returns_the_length()
    {
        using var bed = new BlkTestBed(512);
        using var device = new VirtioRngDevice();
        DescriptorSegment low = bed.Writable(64);
        DescriptorSegment high = bed.Writable(200, high: true);
        var across = new DescriptorSegment(BlkTestBed.RegionBoundary - 32, 64, true);
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(low, high, across), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(written, Is.EqualTo(328u));
            Assert.That(bed.ReadGuest(low).Any(b => b != 0), Is.True);
            Assert.That(bed.ReadGuest(high).Any(b => b != 0), Is.True);
            Assert.That(bed.ReadGuest(across)[..32].Any(b => b != 0), Is.True);
            Assert.That(bed.ReadGuest(across)[32..].Any(b => b != 0), Is.True);
        });
    }

    [Test]
    public void Bytes_are_not_constant()
    {
        using var bed = new BlkTestBed(512);
        using var device = new VirtioRngDevice();
        DescriptorSegment first = bed.Writable(64);
        DescriptorSegment second = bed.Writable(64);
        device.ProcessRequestForTest(0, BlkTestBed.Chain(first), bed.Memory);
        device.ProcessRequestForTest(0, BlkTestBed.Chain(second), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(bed.ReadGuest(first), Is.Not.EqualTo(bed.ReadGuest(second)));
            Assert.That(bed.ReadGuest(first).Distinct().Count(), Is.GreaterThan(8));
        });
    }

    [Test]
    public void Readable_buffers_are_left_alone_and_big_buffers_are_capped()
    {
        using var bed = new BlkTestBed(512);
        using var device = new VirtioRngDevice();
        DescriptorSegment readable = bed.Readable(new byte[32]);
        DescriptorSegment big = bed.Writable(VirtioRngDevice.MaxBytesPerRequest + 4096);
        uint written = device.ProcessRequestForTest(0, BlkTestBed.Chain(readable, big), bed.Memory);
        Assert.Multiple(() =>
        {
            Assert.That(written, Is.EqualTo((uint)VirtioRngDevice.MaxBytesPerRequest));
            Assert.That(bed.ReadGuest(readable), Is.All.Zero);
            Assert.That(bed.ReadGuest(big)[^4096..], Is.All.Zero);
            Assert.That(device.ProcessRequestForTest(0, BlkTestBed.Chain(readable), bed.Memory), Is.Zero);
        });
    }

    [Test]
    public void Identity()
    {
        using var device = new VirtioRngDevice();
        byte[] config = [1, 2];
        device.ReadConfig(0, config);
        Assert.Multiple(() =>
        {
            Assert.That(device.DeviceId, Is.EqualTo(VirtioDeviceId.Entropy));
            Assert.That(device.QueueCount, Is.EqualTo(1));
            Assert.That(device.ConfigSize, Is.Zero);
            Assert.That(config, Is.All.Zero);
            Assert.That(device.DeviceFeatures, Is.EqualTo(VirtioDeviceBase.SupportedRingFeatures));
        });
    }
}

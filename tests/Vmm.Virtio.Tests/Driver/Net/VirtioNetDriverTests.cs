using System.Runtime.InteropServices;
using NUnit.Framework;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Net;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Driver.Net;

/// <summary>The virtio-net guest driver against an in-process device the test pumps by hand (<see cref="FakeNetDevice"/>).</summary>
[TestFixture]
public sealed class VirtioNetDriverTests
{
    private static readonly byte[] DeviceMac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    private FakeNetDevice _device = null!;
    private DeviceGuest _guest = null!;
    private VirtioNetDriver _net = null!;

    [TearDown]
    public void TearDown()
    {
        _net?.Dispose();
        _guest?.Dispose();
        _device?.Dispose();
        _deviceMacOverride = null;
    }

    [TestCase(true, false)]
    [TestCase(false, false)]
    [TestCase(true, true)]
    [TestCase(false, true)]
    public void Frames_of_every_size_must_come_back_whole_with_and_without_mergeable_buffers(bool mergeable, bool packed)
    {
        Start(VirtioNetFeatures.MAC | (mergeable ? VirtioNetFeatures.MRG_RXBUF : 0), packed);
        Assert.That(_net.Mergeable, Is.EqualTo(mergeable));
        Assert.That(_net.ReceiveBufferSize, Is.EqualTo(mergeable ? 1024 : 1536));
        var buffer = new byte[65550];
        // More frames than the receive ring has buffers: they are refilled as frames are taken.
        for (int i = 0; i < 300; i++)
        {
            byte[] frame = Frame(60 + (i * 97 % 1455), i);
            Assert.That(_net.TrySend(frame), Is.True);
            _net.Flush();
            Assert.That(_device.Pump(), Is.EqualTo(1));
            int length = _net.TryReceive(buffer);
            Assert.That(buffer.AsSpan(0, length).ToArray(), Is.EqualTo(frame), $"frame {i}");
        }

        Assert.That(_net.FramesReceived, Is.EqualTo(300));
        Assert.That(_net.ReceiveErrors, Is.Zero);
        Assert.That(_net.TryReceive(buffer), Is.EqualTo(-1));
    }

    [Test]
    public void Mac_and_link_must_come_from_the_config_when_offered_and_a_random_local_mac_otherwise()
    {
        Start(VirtioNetFeatures.MAC | VirtioNetFeatures.STATUS);
        Assert.That(_net.Mac, Is.EqualTo(DeviceMac));
        Assert.That(_net.MacFromDevice, Is.True);
        Assert.That(_net.LinkUp, Is.True);

        Start(0);
        Assert.That(_net.MacFromDevice, Is.False);
        Assert.That(_net.Mac[0] & 0x03, Is.EqualTo(0x02), "locally administered, unicast");
        Assert.That(_net.HasLinkStatus, Is.False);
        Assert.That(_net.LinkUp, Is.True, "without STATUS the link is up (5.1.4.2)");
    }

    [Test]
    public void Link_change_must_be_seen_after_a_configuration_interrupt()
    {
        Start(VirtioNetFeatures.STATUS);
        _device.SetLink(false);
        Assert.That(WaitFor(() => !_net.LinkUp), Is.True);
        _device.SetLink(true);
        Assert.That(WaitFor(() => _net.LinkUp), Is.True);
    }

    [Test]
    public void A_multicast_mac_in_the_config_must_be_replaced_by_a_random_one()
    {
        _deviceMacOverride = [0x01, 0x00, 0x5e, 0, 0, 1];
        Start(VirtioNetFeatures.MAC);
        Assert.That(_net.MacFromDevice, Is.False);
        Assert.That(_net.Mac, Is.Not.EqualTo(_deviceMacOverride));
    }

    [Test]
    public void Malformed_receive_buffers_must_be_dropped_counted_and_given_back()
    {
        Start(VirtioNetFeatures.MRG_RXBUF);
        var buffer = new byte[65550];
        byte[] Header(ushort buffers)
        {
            var header = new VirtioNetHeader { NumBuffers = buffers };
            return MemoryMarshal.AsBytes(new ReadOnlySpan<VirtioNetHeader>(in header)).ToArray();
        }

        // Shorter than a header and an Ethernet header.
        _device.DeliverRaw(([.. Header(1), 1, 2, 3], 15));
        // A used length beyond the buffer.
        _device.DeliverRaw(([.. Header(1), .. new byte[20]], 5000));
        // num_buffers 0, and num_buffers beyond the ring.
        _device.DeliverRaw(([.. Header(0), .. new byte[20]], 32));
        _device.DeliverRaw(([.. Header(500), .. new byte[20]], 32));
        // num_buffers 3, but only one more buffer used.
        _device.DeliverRaw(([.. Header(3), .. new byte[20]], 32), (new byte[10], 10));
        for (int i = 0; i < 5; i++)
        {
            Assert.That(_net.TryReceive(buffer), Is.EqualTo(-1));
        }

        Assert.That(_net.ReceiveErrors, Is.EqualTo(5));
        Assert.That(_net.LastReceiveError, Does.Contain("num_buffers is 3 but only"));

        // Every buffer went back: a full ring's worth of frames still fits.
        for (int i = 0; i < 64; i++)
        {
            _device.Deliver(Frame(100, i));
            Assert.That(_net.TryReceive(buffer), Is.EqualTo(100));
        }
    }

    [Test]
    public void Transmit_must_refuse_when_every_slot_is_in_the_ring_and_resume_when_the_device_takes_them()
    {
        Start(0);
        int sent = 0;
        while (_net.TrySend(Frame(60, sent)))
        {
            sent++;
        }

        Assert.That(sent, Is.EqualTo(_net.TransmitSlots));
        _net.Flush();
        Assert.That(_device.Pump(), Is.EqualTo(sent));
        Assert.That(_net.WaitForTransmitRoom(TimeSpan.FromSeconds(30)), Is.True);
        Assert.That(_net.TrySend(Frame(60, sent)), Is.True);
        Assert.That(() => _net.TrySend(new byte[VirtioNet.MaximumFrame + 1]), Throws.ArgumentException);
    }

    [Test]
    public async Task Control_commands_must_carry_class_command_and_data_and_report_the_ack()
    {
        Start(VirtioNetFeatures.CTRL_VQ | VirtioNetFeatures.CTRL_RX);
        Assert.That(_net.HasControlQueue, Is.True);
        Task<bool> on = Task.Run(() => _net.SetPromiscuous(true));
        await AnswerAsync(VirtioNet.VIRTIO_NET_OK);
        Assert.That(await on, Is.True);
        Assert.That(_device.Commands.Single(), Is.EqualTo((VirtioNet.VIRTIO_NET_CTRL_RX, VirtioNet.VIRTIO_NET_CTRL_RX_PROMISC, new byte[] { 1 })).Using<(byte, byte, byte[])>(SameCommand));

        Task<bool> refused = Task.Run(() => _net.SetPromiscuous(false));
        await AnswerAsync(VirtioNet.VIRTIO_NET_ERR);
        Assert.That(await refused, Is.False);

        Task<bool> garbage = Task.Run(() => _net.SetPromiscuous(false));
        await AnswerAsync(7);
        Assert.That(async () => await garbage, Throws.TypeOf<VirtioNetException>().With.Message.Contains("ack 0x07"));
    }

    [Test]
    public void A_control_command_nobody_answers_must_fail_after_the_timeout()
    {
        Start(VirtioNetFeatures.CTRL_VQ | VirtioNetFeatures.CTRL_RX, controlTimeout: TimeSpan.FromMilliseconds(200));
        Assert.That(() => _net.SetPromiscuous(true), Throws.TypeOf<VirtioNetException>().With.Message.Contains("did not answer"));
    }

    private byte[]? _deviceMacOverride;

    private void Start(ulong features, bool packed = false, TimeSpan? controlTimeout = null)
    {
        _net?.Dispose();
        _guest?.Dispose();
        _device = new FakeNetDevice(features, _deviceMacOverride ?? DeviceMac);
        bool control = (features & VirtioNetFeatures.CTRL_VQ) != 0;
        _guest = new DeviceGuest(_device, new VirtioDriverOptions { Features = features, PackedRing = packed, QueueSize = 64, QueueCount = control ? 3 : 2 });
        _net = new VirtioNetDriver(_guest.Driver, _guest.Memory, _guest.Allocator, new VirtioNetDriverOptions { ControlTimeout = controlTimeout ?? TimeSpan.FromSeconds(30) });
    }

    private async Task AnswerAsync(byte ack)
    {
        while (_device.AnswerControl(ack) == 0)
        {
            await Task.Delay(5);
        }
    }

    private static bool SameCommand((byte, byte, byte[]) a, (byte, byte, byte[]) b) => a.Item1 == b.Item1 && a.Item2 == b.Item2 && a.Item3.SequenceEqual(b.Item3);

    private static bool WaitFor(Func<bool> condition)
    {
        long deadline = Environment.TickCount64 + 30_000;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline)
            {
                return false;
            }

            Thread.Sleep(5);
        }

        return true;
    }

    private static byte[] Frame(int length, int seed)
    {
        byte[] frame = new byte[length];
        new Random(seed).NextBytes(frame);
        return frame;
    }
}

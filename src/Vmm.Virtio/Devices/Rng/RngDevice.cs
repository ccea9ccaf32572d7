using System.Security.Cryptography;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Devices.Rng;

/// <summary>
/// The entropy device (virtio 1.2, 5.4): fills each device-writable buffer the driver offers
/// with bytes from the operating system's cryptographic generator. No features, no config.
/// </summary>
public sealed class VirtioRngDevice : VirtioDeviceBase
{
    /// <summary>
    /// Most bytes written for one request. The device may use less than the whole buffer
    /// (5.4.6.2); the cap keeps a huge buffer from occupying the worker.
    /// </summary>
    public const int MaxBytesPerRequest = 64 * 1024;

    public VirtioRngDevice(ushort queueSize = 256)
        : base(VirtioDeviceId.Entropy, SupportedRingFeatures, VirtioRng.QueueCount, queueSize)
    {
    }

    public override int ConfigSize => VirtioRng.ConfigSize;

    public override void ReadConfig(uint offset, Span<byte> data) => data.Clear();

    public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    internal uint ProcessRequestForTest(int queueIndex, DescriptorChain chain, GuestMemory memory) => ProcessRequest(queueIndex, chain, memory);

    protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory)
    {
        ulong length = Math.Min(chain.WritableLength, MaxBytesPerRequest);
        if (length == 0)
        {
            return 0;
        }

        GuestIoVector vector = GuestIoVector.Rent();
        try
        {
            vector.Add(memory, chain.Segments, deviceWritable: true, 0, length);
        }
        catch (GuestMemoryException ex)
        {
            throw new VirtqueueException($"virtio-rng buffer (head {chain.Head}) lies outside guest memory.", ex);
        }

        for (int i = 0; i < vector.Count; i++)
        {
            RandomNumberGenerator.Fill(vector.Memories[i].Span);
        }

        return (uint)length;
    }
}

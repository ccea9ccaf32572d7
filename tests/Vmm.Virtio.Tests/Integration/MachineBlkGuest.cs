using Akka.Actor;
using NUnit.Framework;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Integration;

/// <summary>
/// A whole guest over one blk device: guest memory, a <see cref="VirtioMachine"/> with the device
/// behind virtio-mmio or virtio-pci, the guest driver found by discovery and initialised, and
/// <see cref="VirtioBlkRequests"/> over its first queue. Requests wait on the queue's interrupt.
/// </summary>
internal sealed class MachineBlkGuest : IDisposable
{
    public const ulong MemorySize = 16 << 20;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    public MachineBlkGuest(
        IVirtioDevice device,
        VirtioTransportKind transport,
        GuestInterruptDelivery delivery,
        IActorRef? controller,
        VirtioDriverOptions options)
    {
        Memory = GuestMemory.Create(MemorySize);
        Allocator = new GuestMemoryAllocator(0x10_0000, MemorySize - 0x10_0000);
        Machine = new VirtioMachine(Memory, delivery, controller);
        if (transport == VirtioTransportKind.Mmio)
        {
            Machine.AttachMmio(device);
        }
        else
        {
            Machine.AttachPci(device);
        }

        VirtioDeviceLocation location = Machine.Discover().Single();
        Assert.That(location.Kind, Is.EqualTo(transport));
        Driver = Machine.CreateDriver(location, new GuestDriverQueueFactory(Memory, Allocator), options with { Features = VirtioBlkFeatures.FLUSH | VirtioBlkFeatures.CONFIG_WCE });
        Driver.Initialize();
        Queue = Driver.Queues[0];
        Requests = new VirtioBlkRequests(Queue.Queue, Memory, new GuestBufferPool(Allocator));
    }

    public GuestMemory Memory { get; }

    public GuestMemoryAllocator Allocator { get; }

    public VirtioMachine Machine { get; }

    public VirtioGuestDriver Driver { get; }

    public VirtioDriverQueue Queue { get; }

    public VirtioBlkRequests Requests { get; }

    /// <summary>Submits, waiting for completions (handed to <paramref name="completed"/>) while the ring is full; kicks as asked.</summary>
    public VirtioBlkRequest Submit(Func<VirtioBlkRequests, VirtioBlkRequest?> submit, Action<VirtioBlkRequest> completed)
    {
        while (true)
        {
            VirtioBlkRequest? request;
            lock (Queue.SyncRoot)
            {
                request = submit(Requests);
            }

            if (request is not null)
            {
                Queue.Notify();
                return request;
            }

            completed(WaitOne());
        }
    }

    /// <summary>The next completion, sleeping on the queue's interrupt.</summary>
    public VirtioBlkRequest WaitOne()
    {
        long deadline = Environment.TickCount64 + (long)Timeout.TotalMilliseconds;
        while (true)
        {
            lock (Queue.SyncRoot)
            {
                if (Requests.TryComplete(out VirtioBlkRequest? done))
                {
                    return done!;
                }

                if (Queue.Queue.EnableInterrupts())
                {
                    continue;
                }
            }

            long left = deadline - Environment.TickCount64;
            if (left <= 0)
            {
                Assert.Fail($"no completion within {Timeout}");
            }

            if (StrictInterrupts)
            {
                if (!Queue.WaitForInterrupt(TimeSpan.FromMilliseconds(left)))
                {
                    Assert.Fail($"no interrupt within {Timeout} for a request in flight");
                }

                continue;
            }

            Queue.WaitForInterrupt(TimeSpan.FromMilliseconds(Math.Min(left, 200)));
        }
    }

    /// <summary>
    /// When set, <see cref="WaitOne"/> sleeps on the interrupt until the deadline instead of
    /// looking at the ring every 200 ms, and fails when the interrupt does not come: a lost
    /// interrupt fails the test.
    /// </summary>
    public bool StrictInterrupts { get; init; }

    public int InFlight
    {
        get
        {
            lock (Queue.SyncRoot)
            {
                return Requests.InFlight;
            }
        }
    }

    public void Dispose()
    {
        Driver.Dispose();
        Machine.Dispose();
        Memory.Dispose();
    }
}

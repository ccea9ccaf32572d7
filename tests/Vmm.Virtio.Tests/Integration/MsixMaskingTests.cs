using Akka.Actor;
using NUnit.Framework;
using Vmm.Core.Interrupts;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;
using Vmm.Virtio.Tests.Devices;

namespace Vmm.Virtio.Tests.Integration;

/// <summary>
/// The guest driver masks and unmasks its queue's MSI-X vector (and the whole function) while
/// I/O runs, as Linux does on affinity changes: every completion's interrupt must still arrive
/// (held pending while masked, delivered once on unmask), and the data must verify.
/// </summary>
[TestFixture]
public sealed class MsixMaskingTests
{
    private const int Sector = VirtioBlk.SectorSize;
    private const int MinimumToggles = 400;
    private ActorSystem _system = null!;

    [OneTimeSetUp]
    public void StartSystem() => _system = ActorSystem.Create("msix-masking");

    [OneTimeTearDown]
    public async Task StopSystem()
    {
        await _system.Terminate();
        _system.Dispose();
    }

    [Test]
    public void A_verify_passes_while_the_guest_masks_and_unmasks_the_queue_vector_hundreds_of_times(
        [Values(GuestInterruptDelivery.FunctionBacked, GuestInterruptDelivery.EventBacked)] GuestInterruptDelivery delivery,
        [Values(false, true)] bool eventIndex)
    {
        const int requests = 64;
        const int blocks = 4;
        using var bed = new BlkTestBed(requests * blocks * (long)Sector, fill: 0);
        using VirtioBlkDevice device = bed.CreateDevice();
        IActorRef? controller = delivery == GuestInterruptDelivery.FunctionBacked ? _system.ActorOf(InterruptControllerActor.Props()) : null;
        var options = new VirtioDriverOptions { EventIndex = eventIndex, QueueSize = 16 };
        using var guest = new MachineBlkGuest(device, VirtioTransportKind.Pci, delivery, controller, options) { StrictInterrupts = true };
        Assert.That(guest.Driver.UsesMsix, Is.True);

        int toggles = 0;
        using var stop = new CancellationTokenSource();
        Task masker = Task.Factory.StartNew(
            () =>
            {
                var random = new Random(7);
                while (!stop.IsCancellationRequested)
                {
                    // Mostly the queue's own entry, sometimes the whole function (Linux masks both ways).
                    bool function = random.Next(4) == 0;
                    Mask(guest.Driver, function, true);
                    Thread.SpinWait(random.Next(2000));
                    Mask(guest.Driver, function, false);
                    Interlocked.Increment(ref toggles);
                    Thread.SpinWait(random.Next(2000));
                }
            },
            TaskCreationOptions.LongRunning);

        ulong[] buffers = [.. Enumerable.Range(0, requests).Select(_ => guest.Allocator.Allocate(blocks * Sector, 4096))];
        int rounds = 0;
        try
        {
            while (Volatile.Read(ref toggles) < MinimumToggles || rounds < 2)
            {
                Assert.That(rounds, Is.LessThan(10_000), "the masker did not get to run");
                VerifyRound(guest, buffers, blocks, seed: rounds * requests);
                rounds++;
            }
        }
        finally
        {
            stop.Cancel();
            masker.Wait();
        }

        Assert.Multiple(() =>
        {
            Assert.That(toggles, Is.GreaterThanOrEqualTo(MinimumToggles));
            Assert.That(guest.Machine.Discover(), Has.Count.EqualTo(1));
        });
        TestContext.Out.WriteLine($"{rounds} verify rounds of {requests} requests, {toggles} mask/unmask pairs");
        if (controller is not null)
        {
            _system.Stop(controller);
        }
    }

    private static void Mask(VirtioGuestDriver driver, bool function, bool masked)
    {
        if (function)
        {
            driver.SetFunctionMask(masked);
        }
        else
        {
            driver.MaskQueueVector(0, masked);
        }
    }

    /// <summary>Writes a pattern to every block range, flushes, reads it all back and compares.</summary>
    private static void VerifyRound(MachineBlkGuest guest, ulong[] buffers, int blocks, int seed)
    {
        var done = new List<VirtioBlkRequest>();
        var data = new byte[buffers.Length][];
        for (int i = 0; i < buffers.Length; i++)
        {
            data[i] = BlkTestBed.Pattern(blocks * Sector, seed + i);
            guest.Memory.Write(buffers[i], data[i]);
            ulong b = buffers[i];
            ulong sector = (ulong)(i * blocks);
            guest.Submit(r => r.TrySubmitWrite(sector, [new(b, (uint)(blocks * Sector), false)]), done.Add);
        }

        guest.Submit(r => r.TrySubmitFlush(), done.Add);
        Drain(guest, done);
        Assert.That(done, Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);

        done.Clear();
        for (int i = 0; i < buffers.Length; i++)
        {
            guest.Memory.Clear(buffers[i], (ulong)(blocks * Sector));
            ulong b = buffers[i];
            ulong sector = (ulong)(i * blocks);
            guest.Submit(r => r.TrySubmitRead(sector, [new(b, (uint)(blocks * Sector), true)]), done.Add);
        }

        Drain(guest, done);
        Assert.That(done, Has.Count.EqualTo(buffers.Length));
        Assert.That(done, Has.All.Property(nameof(VirtioBlkRequest.Succeeded)).True);
        for (int i = 0; i < buffers.Length; i++)
        {
            byte[] back = new byte[blocks * Sector];
            guest.Memory.Read(buffers[i], back);
            Assert.That(back, Is.EqualTo(data[i]), $"blocks of request {i} (seed {seed})");
        }
    }

    private static void Drain(MachineBlkGuest guest, List<VirtioBlkRequest> done)
    {
        while (guest.InFlight > 0)
        {
            done.Add(guest.WaitOne());
        }
    }
}

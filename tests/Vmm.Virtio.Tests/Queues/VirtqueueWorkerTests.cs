using System.Collections.Concurrent;
using NUnit.Framework;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Queues;

[TestFixture]
public sealed class VirtqueueWorkerTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    [TestCaseSource(typeof(QueueHarness), nameof(QueueHarness.RingKinds))]
    public void Device_processes_kicks_on_its_own_worker_thread(bool packed, ulong features)
    {
        using QueueHarness h = QueueHarness.Create(packed, 64, features);
        using var device = new EchoDevice();
        device.StartQueue(0, h.Resources, h.Features);
        DriverBuffer[][] requests = Enumerable.Range(0, 5).Select(i => h.Request((uint)i)).ToArray();
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.That(h.Driver.TrySubmit(requests[i], i), Is.True);
        }

        if (h.Driver.NeedsKick())
        {
            h.Kick.Signal();
        }

        List<object> tokens = TakeUntil(h, 5);
        Assert.That(tokens, Is.EquivalentTo(new object[] { 0, 1, 2, 3, 4 }));
        Assert.That(requests.Select(h.ReadTag), Is.EqualTo(new uint[] { 0, 1, 2, 3, 4 }));
        Assert.That(device.ThreadNames, Is.EquivalentTo(new[] { "vq-rng-0" }));
        Assert.That(h.Interrupts, Is.GreaterThan(0));
        Assert.That(device.StopQueue(0), Is.Not.Null);
    }

    [TestCaseSource(typeof(QueueHarness), nameof(QueueHarness.RingKinds))]
    public void A_stream_larger_than_the_ring_flows_through_kicks_and_interrupts(bool packed, ulong features)
    {
        const int total = 3000;
        using QueueHarness h = QueueHarness.Create(packed, 32, features);
        using var device = new EchoDevice();
        device.StartQueue(0, h.Resources, h.Features);
        DriverBuffer[][] requests = Enumerable.Range(0, 32).Select(i => h.Request((uint)i)).ToArray();
        bool[] inFlight = new bool[requests.Length];
        int submitted = 0;
        int taken = 0;
        var seen = new bool[total];
        DateTime deadline = DateTime.UtcNow + Timeout;
        while (taken < total)
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), $"stalled at {taken} of {total}");
            while (submitted < total && !inFlight[submitted % requests.Length])
            {
                DriverBuffer[] r = requests[submitted % requests.Length];
                h.Memory.WriteUInt32(r[0].Address, (uint)submitted);
                if (!h.Driver.TrySubmit(r, submitted))
                {
                    break;
                }

                inFlight[submitted % requests.Length] = true;
                submitted++;
            }

            if (h.Driver.NeedsKick())
            {
                h.Kick.Signal();
            }

            bool any = false;
            while (h.Driver.TryTakeUsed(out object? t, out uint written))
            {
                int token = (int)t!;
                Assert.That(written, Is.EqualTo(4));
                Assert.That(seen[token], Is.False, $"token {token} twice");
                Assert.That(h.ReadTag(requests[token % requests.Length]), Is.EqualTo((uint)token));
                seen[token] = true;
                inFlight[token % requests.Length] = false;
                taken++;
                any = true;
            }

            if (!any && !h.Driver.EnableInterrupts())
            {
                h.InterruptSignal.Wait(50);
            }
        }

        Assert.That(seen, Is.All.True);
        VirtqueueState? s = device.StopQueue(0);
        Assert.That(s, Is.Not.Null);
        Assert.That(s!.Value.AvailableIndex, Is.EqualTo(s.Value.UsedIndex));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void A_malformed_ring_raises_Faulted_and_the_process_lives_on(bool packed)
    {
        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using QueueHarness h = QueueHarness.Create(packed, 8, 0, memory);
        VirtqueueParams p;
        if (packed)
        {
            var ring = new RawPackedRing(memory, 4);
            for (ushort i = 0; i < 4; i++)
            {
                ring.Desc(i, 0x8000, 16, 0, VirtqueueLayout.VIRTQ_DESC_F_NEXT);
            }

            p = ring.Params;
        }
        else
        {
            var ring = new RawSplitRing(memory, 4);
            ring.Desc(0, 0x8000, 16, VirtqueueLayout.VIRTQ_DESC_F_NEXT, 1);
            ring.Desc(1, 0x8000, 16, VirtqueueLayout.VIRTQ_DESC_F_NEXT, 0);
            ring.Offer(0);
            p = ring.Params;
        }

        using var device = new EchoDevice();
        using var faulted = new ManualResetEventSlim();
        DeviceFault? fault = null;
        device.Faulted += f =>
        {
            fault = f;
            faulted.Set();
        };
        device.StartQueue(0, new VirtqueueResources(p, memory, h.Kick, h.Interrupt), packed ? VirtioFeatures.RING_PACKED : 0);
        h.Kick.Signal();
        Assert.That(faulted.Wait(Timeout), Is.True);
        Assert.That(fault!.QueueIndex, Is.Zero);
        Assert.That(fault.Cause, Is.InstanceOf<VirtqueueException>());
        VirtqueueState? first = device.StopQueue(0);
        Assert.That(first, Is.Not.Null);
        Assert.That(device.StopQueue(0), Is.EqualTo(first));
    }

    [Test]
    public void A_request_handler_that_throws_faults_the_device_instead_of_crashing()
    {
        using QueueHarness h = QueueHarness.Create(false, 8);
        using var device = new EchoDevice { OnTag = _ => throw new GuestMemoryException(0xdead_0000, 4) };
        using var faulted = new ManualResetEventSlim();
        DeviceFault? fault = null;
        device.Faulted += f =>
        {
            fault = f;
            faulted.Set();
        };
        device.StartQueue(0, h.Resources, h.Features);
        h.Driver.TrySubmit(h.Request(1), 1);
        h.Kick.Signal();
        Assert.That(faulted.Wait(Timeout), Is.True);
        Assert.That(fault!.Cause, Is.InstanceOf<GuestMemoryException>());

        // A subscriber may reset the device from the fault event.
        device.Reset();
        Assert.That(device.StopQueue(0), Is.Null);
        Assert.That(device.Resets, Is.EqualTo(1));
    }

    [Test]
    public void StopQueue_is_null_before_start_and_returns_the_same_state_twice()
    {
        using QueueHarness h = QueueHarness.Create(false, 8);
        using var device = new EchoDevice();
        Assert.That(device.StopQueue(0), Is.Null);
        device.StartQueue(0, h.Resources, h.Features);
        h.Driver.TrySubmit(h.Request(1), 1);
        h.Kick.Signal();
        TakeUntil(h, 1);
        VirtqueueState? first = device.StopQueue(0);
        Assert.That(first, Is.EqualTo(new VirtqueueState(1, 1)));
        Assert.That(device.StopQueue(0), Is.EqualTo(first));
        Assert.That(() => device.StopQueue(1), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void Starting_a_started_queue_stops_the_old_worker_first()
    {
        using QueueHarness h = QueueHarness.Create(false, 8);
        using var device = new EchoDevice();
        device.StartQueue(0, h.Resources, h.Features);
        h.Driver.TrySubmit(h.Request(1), 1);
        h.Kick.Signal();
        TakeUntil(h, 1);
        device.StartQueue(0, h.Resources, h.Features, new VirtqueueState(1, 1));
        h.Driver.TrySubmit(h.Request(2), 2);
        h.Kick.Signal();
        Assert.That(TakeUntil(h, 1), Is.EqualTo(new object[] { 2 }));
        Assert.That(device.Seen, Is.EqualTo(new uint[] { 1, 2 }));
    }

    [TestCaseSource(typeof(QueueHarness), nameof(QueueHarness.RingKinds))]
    public void Stop_and_restart_from_the_saved_state_loses_and_repeats_nothing(bool packed, ulong features)
    {
        const int firstBatch = 100;
        const int secondBatch = 20;
        using QueueHarness h = QueueHarness.Create(packed, 256, features);
        using var gate = new ManualResetEventSlim();
        using var reached = new ManualResetEventSlim();
        using var first = new EchoDevice
        {
            OnTag = tag =>
            {
                if (tag == 40)
                {
                    reached.Set();
                    gate.Wait(Timeout);
                }
            },
        };
        first.StartQueue(0, h.Resources, h.Features);
        Submit(h, 0, firstBatch);
        Assert.That(reached.Wait(Timeout), Is.True);

        // Stop while the worker is inside request 40; it completes that one and stops.
        Task<VirtqueueState?> stopping = Task.Run(() => first.StopQueue(0));
        Thread.Sleep(200);
        gate.Set();
        Assert.That(stopping.Wait(Timeout), Is.True);
        VirtqueueState state = stopping.Result!.Value;
        Assert.That(first.StopQueue(0), Is.EqualTo(state));
        int doneByFirst = first.Seen.Count;
        Assert.That(doneByFirst, Is.InRange(41, firstBatch - 1));
        List<object> tokens = TakeUntil(h, doneByFirst);

        using var second = new EchoDevice();
        second.StartQueue(0, h.Resources, h.Features, state);
        tokens.AddRange(TakeUntil(h, firstBatch - doneByFirst));
        Submit(h, firstBatch, secondBatch);
        tokens.AddRange(TakeUntil(h, secondBatch));

        IEnumerable<int> expected = Enumerable.Range(0, firstBatch + secondBatch);
        Assert.That(tokens.Cast<int>(), Is.EquivalentTo(expected));
        Assert.That(first.Seen.Concat(second.Seen).Select(t => (int)t), Is.EquivalentTo(expected));
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(256));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Without_a_kick_fd_the_worker_polls(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 16);
        using var worker = new VirtqueueWorker("vq-poll-0", h.Device, null, c => QueueHarness.Echo(h.Memory, c));
        worker.Start();
        for (int i = 0; i < 3; i++)
        {
            h.Driver.TrySubmit(h.Request((uint)i), i);
        }

        Assert.That(TakeUntil(h, 3), Is.EquivalentTo(new object[] { 0, 1, 2 }));
        VirtqueueState s = worker.Stop();
        Assert.That(worker.Stop(), Is.EqualTo(s));
        Assert.That(worker.IsRunning, Is.False);
    }

    [Test]
    public void A_device_polls_when_the_resources_say_there_is_no_kick_fd()
    {
        using QueueHarness h = QueueHarness.Create(false, 16);
        using var device = new EchoDevice();
        device.StartQueue(0, h.Resources with { PollWithoutKick = true }, h.Features);
        Thread.Sleep(20);
        h.Driver.TrySubmit(h.Request(9), 9);
        Assert.That(TakeUntil(h, 1), Is.EqualTo(new object[] { 9 }));
        Assert.That(device.StopQueue(0), Is.EqualTo(new VirtqueueState(1, 1)));
    }

    private static void Submit(QueueHarness h, int from, int count)
    {
        for (int i = from; i < from + count; i++)
        {
            Assert.That(h.Driver.TrySubmit(h.Request((uint)i), i), Is.True);
        }

        if (h.Driver.NeedsKick())
        {
            h.Kick.Signal();
        }
    }

    private static List<object> TakeUntil(QueueHarness h, int count)
    {
        var tokens = new List<object>();
        DateTime deadline = DateTime.UtcNow + Timeout;
        while (tokens.Count < count)
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), $"only {tokens.Count} of {count} completions arrived");
            while (tokens.Count < count && h.Driver.TryTakeUsed(out object? t, out _))
            {
                tokens.Add(t!);
            }

            if (tokens.Count < count && !h.Driver.EnableInterrupts())
            {
                h.InterruptSignal.Wait(50);
            }
        }

        return tokens;
    }

    /// <summary>A device that echoes each request's tag into its writable buffer and records it.</summary>
    private sealed class EchoDevice : VirtioDeviceBase
    {
        private readonly ConcurrentQueue<uint> _seen = new();
        private readonly ConcurrentDictionary<string, bool> _threads = new();
        private int _resets;

        public EchoDevice() : base(VirtioDeviceId.Entropy, SupportedRingFeatures, 1, 256)
        {
        }

        public Action<uint>? OnTag { get; init; }

        public IReadOnlyCollection<uint> Seen => _seen;

        public ICollection<string> ThreadNames => _threads.Keys;

        public int Resets => Volatile.Read(ref _resets);

        public override int ConfigSize => 0;

        public override void ReadConfig(uint offset, Span<byte> data) => data.Clear();

        public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
        {
        }

        protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory)
        {
            _threads[Thread.CurrentThread.Name ?? "?"] = true;
            uint tag = memory.ReadUInt32(chain.Segments[0].Address);
            OnTag?.Invoke(tag);
            _seen.Enqueue(tag);
            return QueueHarness.Echo(memory, chain);
        }

        protected override void OnReset() => Interlocked.Increment(ref _resets);
    }
}

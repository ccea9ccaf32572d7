using System.Collections.Concurrent;
using Akka.Actor;
using Vmm.Core.Interrupts;
using Vmm.TestKit;

namespace Vmm.Core.Tests.Interrupts;

[TestFixture]
public sealed class InterruptControllerActorTests : AkkaTest
{
    [Test]
    public async Task InterruptControllerActor_must_deliver_a_port_line_to_a_plain_sink_on_its_own_thread()
    {
        // The sink blocks: a raise that called it directly would block with it.
        var port = new InterruptPort();
        using var gate = new ManualResetEventSlim(false);
        var sink = new RecordingSink { Gate = gate };
        StartController(port, sink);
        InterruptLine line = port.CreateLine(65);

        Task raise = Task.Factory.StartNew(line.Raise, TaskCreationOptions.LongRunning);

        Assert.That(raise.Wait(TimeSpan.FromSeconds(30)), Is.True, "the raise waited for the sink");
        await AwaitConditionAsync(() => Task.FromResult(sink.Entered == 1), TimeSpan.FromSeconds(30));
        gate.Set();
        await AwaitConditionAsync(() => Task.FromResult(sink.Deliveries.Count == 1), TimeSpan.FromSeconds(30));
        Assert.That(sink.Deliveries.Single().Vector, Is.EqualTo(65));
    }

    [Test]
    public async Task InterruptControllerActor_must_deliver_a_burst_of_raises_in_one_drain()
    {
        // The sink holds the controller in its first delivery while 200 more raises of two vectors
        // arrive: they are then delivered once per vector, not once per raise.
        var port = new InterruptPort();
        using var gate = new ManualResetEventSlim(false);
        var sink = new RecordingSink { Gate = gate };
        IActorRef controller = StartController(port, sink);
        InterruptLine a = port.CreateLine(64);
        InterruptLine b = port.CreateLine(65);

        a.Raise();
        await AwaitConditionAsync(() => Task.FromResult(sink.Entered == 1), TimeSpan.FromSeconds(30));
        for (int i = 0; i < 100; i++)
        {
            a.Raise();
            b.Raise();
        }

        gate.Set();

        await AwaitConditionAsync(() => Task.FromResult(sink.Deliveries.Count == 3), TimeSpan.FromSeconds(30));
        InterruptCounts counts = await controller.Ask<InterruptCounts>(GetInterruptCounts.Instance, TimeSpan.FromSeconds(10));
        Assert.That(sink.Deliveries.Select(d => d.Vector), Is.EquivalentTo(new[] { 64, 64, 65 }));
        Assert.That(counts.ByVector[64], Is.EqualTo(101));
        Assert.That(counts.ByVector[65], Is.EqualTo(100));
        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));
        Assert.That(sink.Deliveries, Has.Count.EqualTo(3), "a drain delivered a vector that was not raised again");
    }

    [Test]
    public async Task InterruptControllerActor_must_let_a_concurrent_sink_be_called_on_the_raising_thread()
    {
        var port = new InterruptPort();
        var sink = new ConcurrentRecordingSink();
        IActorRef controller = StartController(port, null);
        controller.Tell(new AttachInterruptSink(sink));
        await controller.Ask<InterruptCounts>(GetInterruptCounts.Instance, TimeSpan.FromSeconds(10));
        InterruptLine line = port.CreateLine(66);

        line.Raise();

        Assert.That(sink.Deliveries.Single(), Is.EqualTo((66, Environment.CurrentManagedThreadId)));
    }

    [Test]
    public async Task InterruptControllerActor_must_deliver_raises_made_before_the_port_was_attached()
    {
        var port = new InterruptPort();
        var sink = new RecordingSink();
        port.CreateLine(67).Raise();
        port.Raise(67);

        StartController(port, sink);

        await AwaitConditionAsync(() => Task.FromResult(sink.Deliveries.Count == 1), TimeSpan.FromSeconds(30));
        Assert.That(sink.Deliveries.Single().Vector, Is.EqualTo(67));
    }

    [Test]
    public async Task InterruptControllerActor_must_count_but_not_deliver_while_detached()
    {
        var port = new InterruptPort();
        var sink = new ConcurrentRecordingSink();
        IActorRef controller = StartController(port, sink);
        controller.Tell(DetachInterruptSink.Instance);
        await controller.Ask<InterruptCounts>(GetInterruptCounts.Instance, TimeSpan.FromSeconds(10));

        port.Raise(68);
        controller.Tell(new RaiseInterrupt(68));
        await AwaitAssertAsync(async () =>
        {
            InterruptCounts counts = await controller.Ask<InterruptCounts>(GetInterruptCounts.Instance, TimeSpan.FromSeconds(10));
            Assert.That(counts.ByVector[68], Is.EqualTo(2));
        });

        Assert.That(sink.Deliveries, Is.Empty);
    }

    [Test]
    public async Task InterruptControllerActor_must_still_deliver_RaiseInterrupt_messages()
    {
        var sink = new RecordingSink();
        IActorRef controller = Sys.ActorOf(InterruptControllerActor.Props(sink));

        controller.Tell(new RaiseInterrupt(70));
        controller.Tell(new RaiseInterrupt(70));

        await AwaitConditionAsync(() => Task.FromResult(sink.Deliveries.Count == 2), TimeSpan.FromSeconds(30));
        InterruptCounts counts = await controller.Ask<InterruptCounts>(GetInterruptCounts.Instance, TimeSpan.FromSeconds(10));
        Assert.That(counts.ByVector[70], Is.EqualTo(2));
    }

    [Test]
    public async Task InterruptControllerActor_must_keep_a_detached_ports_raises_pending()
    {
        var port = new InterruptPort();
        var sink = new ConcurrentRecordingSink();
        IActorRef controller = StartController(port, sink);
        controller.Tell(new DetachInterruptPort(port));
        await controller.Ask<InterruptCounts>(GetInterruptCounts.Instance, TimeSpan.FromSeconds(10));

        port.Raise(71);
        Assert.That(sink.Deliveries, Is.Empty);
        controller.Tell(new AttachInterruptPort(port));

        await AwaitConditionAsync(() => Task.FromResult(sink.Deliveries.Count == 1), TimeSpan.FromSeconds(30));
        Assert.That(sink.Deliveries.Single().Vector, Is.EqualTo(71));
    }

    private IActorRef StartController(InterruptPort port, IInterruptSink? sink)
    {
        IActorRef controller = Sys.ActorOf(InterruptControllerActor.Props(sink));
        controller.Tell(new AttachInterruptPort(port));
        return controller;
    }

    private sealed class RecordingSink : IInterruptSink
    {
        private int _entered;

        public ManualResetEventSlim? Gate { get; init; }

        public ConcurrentQueue<(int Vector, int ThreadId)> Deliveries { get; } = new();

        public int Entered => Volatile.Read(ref _entered);

        public void Deliver(int vector)
        {
            if (Interlocked.Increment(ref _entered) == 1)
            {
                Gate?.Wait(TimeSpan.FromSeconds(30));
            }

            Deliveries.Enqueue((vector, Environment.CurrentManagedThreadId));
        }
    }

    private sealed class ConcurrentRecordingSink : IConcurrentInterruptSink
    {
        public ConcurrentQueue<(int Vector, int ThreadId)> Deliveries { get; } = new();

        public void Deliver(int vector) => Deliveries.Enqueue((vector, Environment.CurrentManagedThreadId));
    }
}

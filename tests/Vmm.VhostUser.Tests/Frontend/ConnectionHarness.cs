using Akka.Actor;
using Akka.TestKit;
using Vmm.Core.Events;
using Vmm.VhostUser.Frontend;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>A connection actor under a TestProbe parent whose strategy records the failure and stops it.</summary>
internal sealed record ConnectionHarness(IActorRef Connection, TestProbe Parent, VhostUserDeviceModel Model, TaskCompletionSource<Exception> Failure)
{
    public static ConnectionHarness Start(TestProbe parent, EventNotifierLoop loop, VhostUserDeviceOptions options, VhostUserDeviceModel? model = null)
    {
        model ??= new VhostUserDeviceModel(options);
        var failure = new TaskCompletionSource<Exception>(TaskCreationOptions.RunContinuationsAsynchronously);
        var strategy = new OneForOneStrategy(e =>
        {
            failure.TrySetResult(e);
            return Directive.Stop;
        });
        IActorRef connection = parent.ChildActorOf(VhostUserConnectionActor.Props(options, model, loop.Watch), "connection", strategy);
        return new ConnectionHarness(connection, parent, model, failure);
    }
}
